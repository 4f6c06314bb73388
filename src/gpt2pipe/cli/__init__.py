"""The `gpt2pipe` command: one subcommand per pipeline stage, each usable without Snakemake.

Subcommands live in one module per area (data, train, evaluate, tools); each module's `register` adds its
subcommands and each handler only parses arguments and calls the library. `main` turns a `Gpt2pipeError`
into one line on stderr and exit status 2, so bad input never shows a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from gpt2pipe import Gpt2pipeError, __version__
from gpt2pipe.cli import data, evaluate, reward_model, rl, tools, train

DESCRIPTION = """\
Pre-train GPT-2 the way llm.c does: FineWeb or any text -> GPT-2 BPE -> llm.c .bin shards -> training ->
val loss and HellaSwag -> report. The Snakemake workflow runs these stages in order; each also runs alone.
Stages read a YAML config (-c) with KEY=VALUE overrides (--set); see `gpt2pipe COMMAND --help`."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpt2pipe", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"gpt2pipe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for area in (data, train, evaluate, reward_model, rl, tools):  # pipeline order in `gpt2pipe --help`
        area.register(sub)
    return parser


def _quiet_stdout() -> None:
    """The reader of our stdout went away (`gpt2pipe config --describe | head`): point stdout at /dev/null
    so that Python's final flush at exit does not print a BrokenPipeError of its own."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the try, not at interpreter exit
    except Gpt2pipeError as e:
        code = getattr(e, "exit_code", 2)
        print(f"gpt2pipe {args.command}: {'error: ' if code == 2 else ''}{e}", file=sys.stderr)
        return code
    except BrokenPipeError:
        _quiet_stdout()
        return 141  # 128 + SIGPIPE, what a shell reports for a command whose reader left
    except KeyboardInterrupt:
        print(f"gpt2pipe {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
