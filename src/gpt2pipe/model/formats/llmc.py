"""llm.c model `.bin` files in and out, as `train_gpt2.py`'s write_model writes them and llm.c reads them.

Layout: a 256-int32 header (20240326, version 3 = fp32 / 5 = bf16, max_seq_len, vocab_size, n_layer,
n_head, n_embd, padded_vocab_size), then the tensors grouped by kind across layers (all ln_1 weights, then
all ln_1 biases, ...). The padded vocabulary rows are zeros, as llm.c writes them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gpt2pipe import Gpt2pipeError
from gpt2pipe.config import ModelConfig
from gpt2pipe.files import atomic_path
from gpt2pipe.model.formats.shapes import expected_shapes
from gpt2pipe.model.gpt import GPT

LLMC_MAGIC = 20240326
LLMC_VERSIONS = {3: torch.float32, 5: torch.bfloat16}
HEADER_BYTES = 1024
# llm.c's order: per kind, all layers, then the next kind
LLMC_LAYER_KEYS = ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
                   "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                   "mlp.c_proj.weight", "mlp.c_proj.bias")


def _llmc_order(cfg: ModelConfig) -> list[str]:
    keys = ["transformer.wte.weight", "transformer.wpe.weight"]
    for kind in LLMC_LAYER_KEYS:
        keys += [f"transformer.h.{i}.{kind}" for i in range(cfg.n_layer)]
    return keys + ["transformer.ln_f.weight", "transformer.ln_f.bias"]


def to_llmc(model: GPT, path: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write `model` as an llm.c model file (float32: version 3, bfloat16: version 5)."""
    cfg = model.config
    if changes := cfg.arch_changes():
        raise Gpt2pipeError(f"{path}: llm.c's model .bin holds GPT-2 only, not model "
                            f"{', '.join(f'{k} {v}' for k, v in changes.items())} (export --format hf instead)")
    version = {v: k for k, v in LLMC_VERSIONS.items()}[dtype]
    header = np.zeros(256, dtype="<i4")
    header[:8] = (LLMC_MAGIC, version, cfg.block_size, cfg.vocab_size, cfg.n_layer, cfg.n_head, cfg.n_embd,
                  cfg.padded_vocab_size)
    state = model.state_dict()
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(header.tobytes())
        for k in _llmc_order(cfg):
            v = state[k].detach().cpu().to(dtype).contiguous()
            if k == "transformer.wte.weight":
                v = v.clone()
                v[cfg.vocab_size :] = 0  # llm.c pads with zeros
            f.write(v.view(torch.int16).numpy().tobytes() if dtype == torch.bfloat16 else v.numpy().tobytes())
    return Path(path)


def _header(path: Path, head: bytes) -> tuple[ModelConfig, torch.dtype]:
    if len(head) < HEADER_BYTES:
        raise Gpt2pipeError(f"{path}: too short for an llm.c model header")
    header = np.frombuffer(head[:HEADER_BYTES], dtype="<i4")
    if header[0] != LLMC_MAGIC:
        raise Gpt2pipeError(f"{path}: not an llm.c GPT-2 model (magic {header[0]}, expected {LLMC_MAGIC})")
    if int(header[1]) not in LLMC_VERSIONS:
        raise Gpt2pipeError(f"{path}: llm.c model version {header[1]} is not supported (3 = fp32, 5 = bf16)")
    T, V, L, H, C, Vp = (int(x) for x in header[2:8])
    cfg = ModelConfig(n_layer=L, n_head=H, n_embd=C, block_size=T, vocab_size=V, padded_vocab_size=Vp)
    return cfg, LLMC_VERSIONS[int(header[1])]


def llmc_config(path: str | Path) -> ModelConfig:
    """The model shape in an llm.c model file's header (the tensors are not read)."""
    path = Path(path)
    if not path.is_file():
        raise Gpt2pipeError(f"{path}: file not found")
    with open(path, "rb") as f:
        return _header(path, f.read(HEADER_BYTES))[0]


def from_llmc(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The config and our-layout (float32) state dict of an llm.c model file; its size must match its header."""
    path = Path(path)
    if not path.is_file():
        raise Gpt2pipeError(f"{path}: file not found")
    raw = path.read_bytes()
    cfg, dtype = _header(path, raw)
    shapes = expected_shapes(cfg)
    order = _llmc_order(cfg)
    itemsize = 2 if dtype == torch.bfloat16 else 4
    expected = HEADER_BYTES + itemsize * sum(int(np.prod(shapes[k])) for k in order)
    if len(raw) != expected:
        raise Gpt2pipeError(f"{path}: {len(raw)} bytes, but its header describes a model of {expected} bytes")
    state, off = {}, HEADER_BYTES
    for k in order:
        n = int(np.prod(shapes[k]))
        if dtype == torch.bfloat16:
            t = torch.from_numpy(np.frombuffer(raw, dtype="<i2", count=n, offset=off).copy()).view(torch.bfloat16)
        else:
            t = torch.from_numpy(np.frombuffer(raw, dtype="<f4", count=n, offset=off).copy())
        state[k] = t.view(shapes[k]).float()
        off += n * itemsize
    state["lm_head.weight"] = state["transformer.wte.weight"]
    return cfg, state
