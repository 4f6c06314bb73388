"""Checkpoints in and out: Hugging Face GPT-2 directories and llm.c model `.bin` files.

Hugging Face (`GPT2LMHeadModel`): config.json + model.safetensors + tokenizer files; HF's Conv1D layers
store weights as (in, out), ours as nn.Linear's (out, in), so the four projection matrices are
transposed both ways; the vocabulary is unpadded on export and padded again on import; the head is tied.
llm.c (`train_gpt2.py`'s write_model): 256-int32 header (20240326, version 3 = fp32 / 5 = bf16, max_seq_len,
vocab_size, n_layer, n_head, n_embd, padded_vocab_size), then the tensors grouped by kind across layers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from gpt2pipe import Gpt2pipeError
from gpt2pipe.config import ModelConfig
from gpt2pipe.files import atomic_path
from gpt2pipe.model.gpt import GPT

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
LLMC_MAGIC = 20240326
LLMC_VERSIONS = {3: torch.float32, 5: torch.bfloat16}
# llm.c's order: per kind, all layers, then the next kind
LLMC_LAYER_KEYS = ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
                   "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                   "mlp.c_proj.weight", "mlp.c_proj.bias")


def padded(vocab_size: int, multiple: int = 128) -> int:
    return (vocab_size + multiple - 1) // multiple * multiple


def _shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in GPT(cfg).state_dict().items()}


def _check(source: str, state: dict[str, torch.Tensor], cfg: ModelConfig) -> None:
    expected = _shapes(cfg)
    missing = sorted(set(expected) - set(state))
    if missing:
        raise Gpt2pipeError(f"{source}: missing tensors {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    for k, shape in expected.items():
        if tuple(state[k].shape) != shape:
            raise Gpt2pipeError(f"{source}: {k} has shape {tuple(state[k].shape)}, expected {shape}")


# --- Hugging Face --------------------------------------------------------------------------------------

def to_hf(model: GPT, out_dir: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    from safetensors.torch import save_file

    from gpt2pipe.data.tokenizer import hf_tokenizer_files

    cfg = model.config
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for k, v in model.state_dict().items():
        if k == "lm_head.weight":
            continue  # tied to wte; transformers re-ties it on load
        v = v.detach().cpu().to(dtype)
        if k == "transformer.wte.weight":
            v = v[: cfg.vocab_size]
        if k.endswith(CONV1D):
            v = v.t()
        tensors[k] = v.contiguous()
    with atomic_path(out_dir / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    hf_config = {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size, "n_ctx": cfg.block_size, "n_embd": cfg.n_embd, "n_layer": cfg.n_layer,
        "n_head": cfg.n_head, "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "initializer_range": 0.02,
        "bos_token_id": 50256, "eos_token_id": 50256, "tie_word_embeddings": True,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }
    (out_dir / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    (out_dir / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 50256, "eos_token_id": 50256}, indent=2) + "\n")
    for name, text in hf_tokenizer_files(cfg.block_size).items():
        (out_dir / name).write_text(text)
    return out_dir


def from_hf(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_dir():
        raise Gpt2pipeError(f"{path}: not a directory (expected a Hugging Face GPT-2 checkpoint)")
    if not (path / "config.json").is_file():
        raise Gpt2pipeError(f"{path}: no config.json, not a Hugging Face checkpoint")
    hf = json.loads((path / "config.json").read_text())
    if hf.get("model_type") != "gpt2":
        raise Gpt2pipeError(f"{path}: model_type is {hf.get('model_type')!r}, not a GPT-2 checkpoint")
    if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise Gpt2pipeError(f"{path}: activation {hf['activation_function']!r} is not GPT-2's tanh GELU")
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise Gpt2pipeError(f"{path}: no model.safetensors (only safetensors weights are read)")
    V = hf["vocab_size"]
    cfg = ModelConfig(n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"], block_size=hf["n_positions"],
                      vocab_size=V, padded_vocab_size=padded(V))
    state = {}
    for k, v in load_file(str(weights)).items():
        k = k if k.startswith(("transformer.", "lm_head.")) else f"transformer.{k}"  # GPT2Model saves bare names
        if k.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # old checkpoints store the causal mask as a buffer
        if k.endswith(CONV1D):
            v = v.t()
        state[k] = v.float().contiguous()
    wte = state.get("transformer.wte.weight")
    if wte is not None and wte.shape[0] == V:
        state["transformer.wte.weight"] = torch.cat([wte, wte.new_zeros(cfg.padded_vocab_size - V, wte.shape[1])])
    state["lm_head.weight"] = state.get("transformer.wte.weight")
    if state["lm_head.weight"] is None:
        raise Gpt2pipeError(f"{weights}: no transformer.wte.weight")
    _check(str(weights), state, cfg)
    return cfg, state


# --- llm.c ----------------------------------------------------------------------------------------------

def _llmc_order(cfg: ModelConfig) -> list[str]:
    L = cfg.n_layer
    keys = ["transformer.wte.weight", "transformer.wpe.weight"]
    for kind in LLMC_LAYER_KEYS:
        keys += [f"transformer.h.{i}.{kind}" for i in range(L)]
    return keys + ["transformer.ln_f.weight", "transformer.ln_f.bias"]


def to_llmc(model: GPT, path: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    cfg = model.config
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


def from_llmc(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    path = Path(path)
    if not path.is_file():
        raise Gpt2pipeError(f"{path}: file not found")
    raw = path.read_bytes()
    if len(raw) < 1024:
        raise Gpt2pipeError(f"{path}: too short for an llm.c model header")
    header = np.frombuffer(raw[:1024], dtype="<i4")
    if header[0] != LLMC_MAGIC:
        raise Gpt2pipeError(f"{path}: not an llm.c GPT-2 model (magic {header[0]}, expected {LLMC_MAGIC})")
    if int(header[1]) not in LLMC_VERSIONS:
        raise Gpt2pipeError(f"{path}: llm.c model version {header[1]} is not supported (3 = fp32, 5 = bf16)")
    dtype = LLMC_VERSIONS[int(header[1])]
    T, V, L, H, C, Vp = (int(x) for x in header[2:8])
    cfg = ModelConfig(n_layer=L, n_head=H, n_embd=C, block_size=T, vocab_size=V, padded_vocab_size=Vp)
    shapes = _shapes(cfg)
    order = _llmc_order(cfg)
    itemsize = 2 if dtype == torch.bfloat16 else 4
    expected = 1024 + itemsize * sum(int(np.prod(shapes[k])) for k in order)
    if len(raw) != expected:
        raise Gpt2pipeError(f"{path}: {len(raw)} bytes, but its header describes a model of {expected} bytes")
    state, off = {}, 1024
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


# --- any source -----------------------------------------------------------------------------------------

def load_any(path: str | Path, expected: ModelConfig | None = None) -> tuple[GPT, dict]:
    """A model from our checkpoint (.pt), an llm.c model (.bin) or a Hugging Face directory."""
    from gpt2pipe.model import checkpoint

    path = Path(path)
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
