"""The train subcommand: shards in, checkpoints and an llm.c-format log out (`gpt2pipe.train.loop.train`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from gpt2pipe import layout
from gpt2pipe.cli.options import add_subcommand, load_config


def cmd_train(args: argparse.Namespace) -> None:
    from gpt2pipe.train.loop import train

    cfg = load_config(args)
    train(cfg, args.shards or layout.shard_dir(cfg.raw), args.run_dir or cfg.run_dir, resume=args.resume,
          restart=args.restart, progress=not args.no_progress, retrain_on_change=args.retrain_on_change)


def register(sub) -> None:
    p = add_subcommand(sub, "train", "train the model; writes checkpoints and an llm.c-format log", cmd_train)
    p.add_argument("--shards", type=Path, help="shard folder (default: <results>/data/<data.name>/shards)")
    p.add_argument("--run-dir", type=Path, help="run folder (default: <results>/<run_name>)")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true",
                       help="continue from the newest saved training state in <run-dir>; refused if it was saved "
                       "under settings that change the trained weights (a finished run republishes its outputs)")
    start.add_argument("--restart", action="store_true",
                       help="start over from step 0 even when a saved training state exists")
    p.add_argument("--retrain-on-change", action="store_true",
                   help="with --resume: a state saved under settings that change the trained weights is kept in "
                   "<run-dir>/train_state/other/ and these settings train from step 0 (or resume their own kept "
                   "state); what the workflow passes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines still written)")
