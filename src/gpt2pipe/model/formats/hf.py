"""Hugging Face GPT-2 directories (`GPT2LMHeadModel`) in and out.

A directory holds config.json + model.safetensors + tokenizer files. HF's Conv1D layers store weights as
(in, out), ours as nn.Linear's (out, in), so the four projection matrices are transposed both ways; the
vocabulary is unpadded on export and padded again on import; the head is tied to the token embedding.
Only safetensors weights are read: a `pytorch_model.bin` is a pickle and could run code when loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from gpt2pipe import Gpt2pipeError
from gpt2pipe.config import ModelConfig
from gpt2pipe.files import atomic_path
from gpt2pipe.model.formats.shapes import check_state, padded
from gpt2pipe.model.gpt import GPT

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def to_hf(model: GPT, out_dir: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write `model` as a directory that `transformers.GPT2LMHeadModel.from_pretrained` and AutoTokenizer load."""
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
        mode = tmp.stat().st_mode
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        tmp.chmod(mode)  # safetensors recreates the file as 0600; keep the mode the other files get
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


def hf_config(path: str | Path) -> ModelConfig:
    """The model shape of a Hugging Face GPT-2 directory, from its config.json alone (no weights read)."""
    path = Path(path)
    if not path.is_dir():
        raise Gpt2pipeError(f"{path}: not a directory (expected a Hugging Face GPT-2 checkpoint)")
    if not (path / "config.json").is_file():
        raise Gpt2pipeError(f"{path}: no config.json, not a Hugging Face checkpoint")
    try:
        hf = json.loads((path / "config.json").read_text())
        if hf.get("model_type") != "gpt2":
            raise Gpt2pipeError(f"{path}: model_type is {hf.get('model_type')!r}, not a GPT-2 checkpoint")
        if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
            raise Gpt2pipeError(f"{path}: activation {hf['activation_function']!r} is not GPT-2's tanh GELU")
        V = int(hf["vocab_size"])
        return ModelConfig(n_layer=int(hf["n_layer"]), n_head=int(hf["n_head"]), n_embd=int(hf["n_embd"]),
                           block_size=int(hf["n_positions"]), vocab_size=V, padded_vocab_size=padded(V))
    except (json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as e:
        raise Gpt2pipeError(f"{path / 'config.json'}: not a GPT-2 config ({type(e).__name__}: {e})") from None


def from_hf(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The config and our-layout state dict of a Hugging Face GPT-2 directory (safetensors only)."""
    from safetensors.torch import load_file

    path = Path(path)
    cfg = hf_config(path)
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise Gpt2pipeError(f"{path}: no model.safetensors (only safetensors weights are read)")
    V = cfg.vocab_size
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
    check_state(str(weights), state, cfg)
    return cfg, state
