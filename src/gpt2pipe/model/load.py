"""One entry point for every model file a user may hand us: `load_any(path)` -> (GPT, meta).

- our checkpoint (`.pt`): through `gpt2pipe.model.checkpoint.load_model` (it owns safe `.pt` loading);
- an llm.c model `.bin` (`train_gpt2.py`'s write_model): `formats.llmc`;
- a Hugging Face GPT-2 directory (safetensors): `formats.hf`.
`sample`, `evaluate`, `export`, `import` and `train.init_from` all load through here, so they accept the same.
"""

from __future__ import annotations

from pathlib import Path

from gpt2pipe import Gpt2pipeError
from gpt2pipe.config import ModelConfig
from gpt2pipe.model import checkpoint
from gpt2pipe.model.formats.hf import from_hf, hf_config
from gpt2pipe.model.formats.llmc import from_llmc, llmc_config
from gpt2pipe.model.gpt import GPT


def is_foreign(path: str | Path) -> bool:
    """A model from elsewhere (HF directory or llm.c .bin): it brings its own shape, not the config's."""
    path = Path(path)
    return path.is_dir() or path.suffix == ".bin"


def foreign_config(path: str | Path) -> ModelConfig:
    """The shape of an HF directory or llm.c `.bin`, read from its config/header without loading weights."""
    path = Path(path)
    return hf_config(path) if path.is_dir() else llmc_config(path)


def model_config_of(path: str | Path) -> ModelConfig:
    """The shape of any model load_any reads, without loading its weights (ours: memory-mapped)."""
    path = Path(path)
    if not path.exists():
        raise Gpt2pipeError(f"{path}: model not found (expected our .pt, an llm.c .bin or a Hugging Face directory)")
    if is_foreign(path):
        return foreign_config(path)
    return checkpoint.model_config(path, checkpoint.read(path, mmap=True))


def load_any(path: str | Path, expected: ModelConfig | None = None) -> tuple[GPT, dict]:
    """A model from our checkpoint (.pt), an llm.c model (.bin) or a Hugging Face directory.

    `expected` (the configured shape) is checked for our checkpoints, whose shape must match the run's;
    foreign models bring their own shape. `meta` holds at least `step`, and `source` for foreign models."""
    path = Path(path)
    if not path.exists():
        raise Gpt2pipeError(f"{path}: model not found (expected our .pt, an llm.c .bin or a Hugging Face directory)")
    if not is_foreign(path):
        return checkpoint.load_model(path, expected)
    if path.is_dir():
        cfg, state = from_hf(path)
        meta = {"step": 0, "source": "huggingface"}
    else:
        cfg, state = from_llmc(path)
        meta = {"step": 0, "source": "llm.c"}
    model = GPT(cfg)
    model.load_state_dict(state)
    return model, meta
