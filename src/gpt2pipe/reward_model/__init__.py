"""The reward-model stage: a GPT-2 trunk with a scalar head, trained on preference pairs with the
Bradley–Terry loss (Ziegler et al. 2019; Stiennon et al. 2020), for `rl.reward: reward_model`.

  pairs.py   preference pairs {prompt, chosen, rejected}: read from a .jsonl file (every row checked before any
             model exists), or made without a download: the starting model's own continuations, or spans of a
             corpus, with the more positive one by VADER chosen
  model.py   the reward model (trunk + head on the last real token), its file format, and the scorer RL calls
  train.py   the stage: pairs -> held-out split -> Bradley–Terry epochs -> pair accuracy, normalisation, outputs
"""
