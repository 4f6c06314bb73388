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
from gpt2pipe.model.formats.hf import from_hf
from gpt2pipe.model.formats.llmc import from_llmc
from gpt2pipe.model.gpt import GPT


def load_any(path: str | Path, expected: ModelConfig | None = None) -> tuple[GPT, dict]:
    """A model from our checkpoint (.pt), an llm.c model (.bin) or a Hugging Face directory.

    `expected` (the configured shape) is checked for our checkpoints, whose shape must match the run's;
    foreign models bring their own shape. `meta` holds at least `step`, and `source` for foreign models."""
    path = Path(path)
    if not path.exists():
        raise Gpt2pipeError(f"{path}: model not found (expected our .pt, an llm.c .bin or a Hugging Face directory)")
    if path.is_dir():
        cfg, state = from_hf(path)
        meta = {"step": 0, "source": "huggingface"}
    elif path.suffix == ".bin":
        cfg, state = from_llmc(path)
        meta = {"step": 0, "source": "llm.c"}
    else:
        return checkpoint.load_model(path, expected)
    model = GPT(cfg)
    model.load_state_dict(state)
    return model, meta
