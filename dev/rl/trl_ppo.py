"""PPO side by side: TRL's PPOTrainer and `gpt2pipe rl` (rl.algorithm ppo) on the same exported model, prompts,
reward and settings, one GPU. TRL 1.x has no PPOTrainer; 0.29.1 (its last 0.x release) has it as
trl.experimental.ppo, and takes the reward as a *model* (`get_reward(model, ...)` reads a sequence classifier's
score at the last token). VADER is given to it through that very function: a marker module for the reward
model, and get_reward answering for it with VADER's compound score of the decoded response (TRL's own
truncation after <|endoftext|> first), so both trainers score the same text the same way.

    python dev/rl/trl_ppo.py HF_DIR PROMPTS.jsonl OUT.tsv [--steps 30]    # PROMPTS from trl_grpo.py prompts

Matched settings (ours: dev/rl/side_by_side.sh's PPO line): 256 responses a step, mini-batches of 64, one
optimizer step each (TRL: per_device_train_batch_size 256, no accumulation, num_mini_batches 4), 4 PPO epochs, 24
new tokens at temperature 0.7, a fixed KL coefficient 0.15 (k1, per token, in the reward), GAE gamma 1 lambda
0.95, advantages whitened, rewards not, clip 0.2, value clip 0.2, vf_coef 0.1, AdamW 3e-5 eps 1e-5 constant, no
grad-norm clip (TRL's PPO has none), a value model that is the policy's trunk with a zero scalar head, bf16
autocast on fp32 models. TRL's wheel travels in .device/trl029/ (apart from TRL 1.16's, which GRPO uses).
"""

import argparse
import json
import sys
import time


def run_trl(a):
    import torch
    import torch.nn as nn
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as trainer_module
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    tok = AutoTokenizer.from_pretrained(a.model)
    # a pad token of its own, as TRL's PPO example adds (pads are masked and zeroed before the model): with
    # pad = eos TRL masks the <|endoftext|> that ends a response (left out of its KL and never trained, where
    # ours counts and trains it) and the one that starts each prompt
    tok.add_special_tokens({"pad_token": "[PAD]"})
    tok.padding_side = "left"
    texts = [json.loads(line)["prompt"] for line in open(a.src)]
    ids = [tok("<|endoftext|>" + t)["input_ids"] for t in texts]
    data = Dataset.from_dict({"input_ids": ids})
    vader = SentimentIntensityAnalyzer()

    class Vader(nn.Module):  # the reward "model": get_reward below answers for it
        def __init__(self):
            super().__init__()
            self.unused = nn.Parameter(torch.zeros(1))

    tokens_reward = trainer_module.get_reward

    def get_reward(model, query_responses, pad_token_id, context_length):
        if not isinstance(model, Vader):
            return tokens_reward(model, query_responses, pad_token_id, context_length)
        rows = query_responses[:, context_length:].tolist()
        responses = [tok.decode([t for t in r if t not in (pad_token_id, tok.eos_token_id)]) for r in rows]
        score = torch.tensor([vader.polarity_scores(r)["compound"] for r in responses], device=query_responses.device)
        return None, score, None

    trainer_module.get_reward = get_reward
    policy = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=torch.float32)
    value = AutoModelForSequenceClassification.from_pretrained(a.model, num_labels=1, torch_dtype=torch.float32)
    with torch.no_grad():
        value.score.weight.zero_()  # as ours: the first values are 0
    value.config.pad_token_id = tok.pad_token_id
    args = PPOConfig(
        # the batch is per_device_train_batch_size x gradient_accumulation_steps rows; each mini-batch (a quarter)
        # is one micro-batch and, with no accumulation in accelerate, one optimizer step: 16 a rollout, as ours
        # (64 x 4 accumulation made accelerate step once every 4 mini-batches: 4 steps a rollout)
        output_dir="/tmp/trl_ppo", total_episodes=a.batch * a.steps, per_device_train_batch_size=a.batch,
        gradient_accumulation_steps=1, num_mini_batches=4, num_ppo_epochs=4, local_rollout_forward_batch_size=a.batch // 4,
        response_length=24, temperature=0.7, stop_token="eos", missing_eos_penalty=None, kl_coef=0.15,
        kl_estimator="k1", whiten_rewards=False, cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, gamma=1.0,
        lam=0.95, learning_rate=a.lr, lr_scheduler_type="constant", warmup_steps=0, adam_epsilon=1e-5,
        bf16=torch.cuda.is_available(), use_cpu=not torch.cuda.is_available(), logging_steps=1,
        num_sample_generations=0, report_to="none", save_strategy="no", seed=42)
    log = open(a.out, "w", buffering=1)  # line by line: a run cut short by a timeout keeps its steps
    log.write("step\treward_mean\tkl\tentropy\tsamples_per_s\n")

    class Timer(TrainerCallback):
        def __init__(self):
            self.t, self.step = time.perf_counter(), 0

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "objective/scores" in logs:
                now = time.perf_counter()
                row = (self.step, logs["objective/scores"], logs["objective/kl"], logs["objective/entropy"],
                       a.batch / (now - self.t))
                log.write("\t".join(f"{v:.6g}" for v in row) + "\n")
                print("trl", *row, flush=True)
                self.t, self.step = now, self.step + 1

    trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=ref, reward_model=Vader(),
                         train_dataset=data, value_model=value, callbacks=[Timer()])
    trainer.train()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--batch", type=int, default=256, help="responses a step (mini-batches: a quarter)")
    run_trl(p.parse_args())


if __name__ == "__main__":
    sys.exit(main())
