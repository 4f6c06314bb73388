"""Checkpoints: model snapshots (evaluated later) and the full training state (for --resume).

Both are torch.save'd dicts with a format tag and the model config, written atomically; loading checks
the tag and that the model shape matches before any tensor is touched.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from gpt2pipe import Gpt2pipeError
from gpt2pipe.config import ModelConfig
from gpt2pipe.files import atomic_path
from gpt2pipe.model.gpt import GPT

FORMAT = "gpt2pipe-checkpoint"
VERSION = 1


def save(path: str | Path, model: GPT, step: int, **extra) -> None:
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model_config": dataclasses.asdict(model.config),
        "step": step,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise Gpt2pipeError(f"{path}: checkpoint not found")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises several types for truncated/foreign files
        raise Gpt2pipeError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise Gpt2pipeError(f"{path}: not a gpt2pipe checkpoint")
    if ck.get("version") != VERSION:
        raise Gpt2pipeError(f"{path}: checkpoint version {ck.get('version')} is not supported (expected {VERSION})")
    return ck


def check_shape(path: str | Path, got: ModelConfig, expected: ModelConfig) -> None:
    """One line naming every field in which the model at `path` differs from the configured one."""
    if got != expected:
        diff = ", ".join(f"{f.name} {getattr(got, f.name)} != {getattr(expected, f.name)}"
                         for f in dataclasses.fields(ModelConfig) if getattr(got, f.name) != getattr(expected, f.name))
        raise Gpt2pipeError(f"{path}: checkpoint is for another model shape (checkpoint vs config: {diff})")


def load_model(path: str | Path, expected: ModelConfig | None = None) -> tuple[GPT, dict]:
    """A GPT built from the checkpoint's own config (checked against `expected` if given)."""
    ck = read(path)
    if expected is not None:
        check_shape(path, ModelConfig(**ck["model_config"]), expected)
    model = GPT(ModelConfig(**ck["model_config"]))
    model.load_state_dict(ck["model"])
    return model, ck
