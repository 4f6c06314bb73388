"""What every subcommand module shares: -c/--set config options, loading the config, adding a subcommand."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from gpt2pipe import config as config_mod

Handler = Callable[[argparse.Namespace], None]


def add_config_options(p: argparse.ArgumentParser) -> None:
    """-c/--configfile and repeatable --set, as in Snakemake's --configfile / --config."""
    p.add_argument("-c", "--configfile", type=Path, default=None,
                   help="YAML run config (default: all schema defaults; see `gpt2pipe config --describe`)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set train.max_steps=100 (repeatable)")


def load_config(args: argparse.Namespace) -> config_mod.Config:
    return config_mod.load(args.configfile, args.overrides)


def add_subcommand(sub, name: str, help: str, func: Handler, config: bool = True) -> argparse.ArgumentParser:
    """A subcommand whose --help starts with `help`; `config` adds -c/--set for stages that read a config."""
    p = sub.add_parser(name, help=help, description=help)
    if config:
        add_config_options(p)
    p.set_defaults(func=func)
    return p
