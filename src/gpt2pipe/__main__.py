"""`python -m gpt2pipe`: the same command as the `gpt2pipe` entry point (the workflow calls it this way)."""

from gpt2pipe.cli import main

raise SystemExit(main())
