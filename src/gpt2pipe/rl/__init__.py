"""RL fine-tuning of a pre-trained model: PPO (Ziegler et al. 2019, as OpenAI's lm-human-preferences and the
"N implementation details of RLHF with PPO" describe it) and GRPO (TRL's GRPOTrainer recipe).

  prompts.py   prompts from a jsonl/parquet file, or prefixes drawn from the run's validation shard
  rewards.py   the reward functions: VADER sentiment, or a Python function the user names
  losses.py    GAE, whitening, the clipped policy and value losses, GRPO's group advantages, KL controllers
  policy.py    the policy, its frozen reference and the value model: log-probabilities, entropies, values
  rollout.py   one batch of experience: sample (model/decode.py's KV-cache sampler), score, KL-shaped rewards
  update.py    PPO's and GRPO's optimisation epochs over one batch of experience
  shard.py     a step's batch over processes (shares of rows, the experience gathered): any process count
               gives the same run
  loop.py      the stage: setup (bad input fails before any model exists), steps, log, checkpoints, resume
"""
