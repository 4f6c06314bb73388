"""The rl subcommand: a trained model in, an RL-tuned policy out (`gpt2pipe.rl.loop.run`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from gpt2pipe.cli.options import add_subcommand, load_config


def cmd_rl(args: argparse.Namespace) -> None:
    from gpt2pipe.rl.loop import run

    cfg = load_config(args)
    run(cfg, args.run_dir or cfg.run_dir, args.shards, resume=args.resume, restart=args.restart,
        progress=not args.no_progress, retrain_on_change=args.retrain_on_change)


def register(sub) -> None:
    p = add_subcommand(sub, "rl", "RL fine-tuning (PPO or GRPO) of the trained model; the config's rl section",
                       cmd_rl)
    p.add_argument("--shards", type=Path, help="shard folder whose val shard prompts are drawn from (default: "
                   "<results>/data/<data.name>/shards; unused with rl.prompts)")
    p.add_argument("--run-dir", type=Path, help="run folder (default: <results>/<run_name>); writes rl/ and rl_state/")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true", help="continue from the newest saved RL state in <run-dir>")
    start.add_argument("--restart", action="store_true", help="start over even when a saved RL state exists")
    p.add_argument("--retrain-on-change", action="store_true",
                   help="with --resume: a state saved under other settings (or from other starting weights) is kept "
                   "in <run-dir>/rl_state/other/ and RL starts over (or resumes its own kept state); what the "
                   "workflow passes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (rl.log lines still written)")
