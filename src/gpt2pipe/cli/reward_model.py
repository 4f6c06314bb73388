"""The reward-model subcommand: preference pairs in, a reward model for `rl.reward: reward_model` out
(`gpt2pipe.reward_model.train.run`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from gpt2pipe.cli.options import add_subcommand, load_config


def cmd_reward_model(args: argparse.Namespace) -> None:
    from gpt2pipe.reward_model.train import run

    cfg = load_config(args)
    run(cfg, args.run_dir or cfg.run_dir, args.shards, progress=not args.no_progress)


def register(sub) -> None:
    p = add_subcommand(sub, "reward-model", "Train a reward model (Bradley-Terry on preference pairs) from the "
                       "trained model; the config's reward_model section", cmd_reward_model)
    p.add_argument("--shards", type=Path, help="shard folder whose val shard gives the prompts of `reward_model.pairs: "
                   "sentiment` (default: <results>/data/<data.name>/shards; unused with a pairs file)")
    p.add_argument("--run-dir", type=Path, help="run folder (default: <results>/<run_name>); writes reward_model/")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
