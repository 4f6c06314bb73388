"""gpt2pipe: pre-train GPT-2 end to end as a reproducible pipeline (llm.c formats, Snakemake workflow)."""

__version__ = "0.1.0"


class Gpt2pipeError(Exception):
    """An error caused by user input (config, files, checkpoints); the CLI prints it as one line."""
