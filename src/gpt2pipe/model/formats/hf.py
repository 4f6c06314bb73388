"""Hugging Face directories in and out: GPT-2 (`GPT2LMHeadModel`) and the LLaMA-style options (`LlamaForCausalLM`).

A directory holds config.json + model.safetensors + tokenizer files (GPT-2's BPE for both). GPT-2: HF's
Conv1D layers store weights as (in, out), ours as nn.Linear's (out, in), so the four projection matrices are
transposed both ways; the head is tied to the token embedding. Llama: our packed projections are split into
q/k/v_proj and gate/up_proj (HF's rotate_half is our RoPE's half-split layout, so no permutation). The
vocabulary is unpadded on export and padded again on import. Only safetensors weights are read: a
`pytorch_model.bin` is a pickle and could run code when loaded.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from gpt2pipe import Gpt2pipeError
from gpt2pipe.config import ModelConfig
from gpt2pipe.files import atomic_path
from gpt2pipe.model.formats.shapes import check_state, padded
from gpt2pipe.model.gpt import GPT, RMS_EPS

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


# what LlamaForCausalLM is, in our options (bias and tie_embeddings map either way; n_kv_head is its GQA)
LLAMA_ARCH = {"pos_embedding": "rope", "norm": "rmsnorm", "mlp": "swiglu", "qk_norm": False}


def hf_kind(cfg: ModelConfig, out: str | Path = "model") -> str:
    """"gpt2" or "llama": the transformers class this architecture maps onto; refuses one that maps onto none."""
    if not cfg.arch_changes():
        return "gpt2"
    misfits = [f"{k} {getattr(cfg, k)}" for k, v in LLAMA_ARCH.items() if getattr(cfg, k) != v]
    if misfits:
        raise Gpt2pipeError(f"{out}: no Hugging Face class holds this model: LlamaForCausalLM has no "
                            f"{', '.join(misfits)} (it needs pos_embedding rope, norm rmsnorm, mlp swiglu, qk_norm "
                            f"false) and GPT2LMHeadModel holds GPT-2's defaults only")
    return "llama"


def to_hf(model: GPT, out_dir: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write `model` as a directory that transformers' `GPT2LMHeadModel` or, for the LLaMA-style options,
    `LlamaForCausalLM` (`.from_pretrained`) and AutoTokenizer load."""
    cfg = model.config
    kind = hf_kind(cfg, out_dir)  # refuse before anything is written
    tensors, hf_config = _gpt2_out(model, dtype) if kind == "gpt2" else _llama_out(model, dtype)
    hf_config["torch_dtype"] = str(dtype).removeprefix("torch.")
    return _write_dir(Path(out_dir), tensors, hf_config, cfg.block_size)


def _write_dir(out_dir: Path, tensors: dict, hf_config: dict, block_size: int) -> Path:
    from safetensors.torch import save_file

    from gpt2pipe.data.tokenizer import hf_tokenizer_files

    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "model.safetensors") as tmp:
        mode = tmp.stat().st_mode
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        tmp.chmod(mode)  # safetensors recreates the file as 0600; keep the mode the other files get
    (out_dir / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    (out_dir / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 50256, "eos_token_id": 50256}, indent=2) + "\n")
    for name, text in hf_tokenizer_files(block_size).items():
        (out_dir / name).write_text(text)
    return out_dir


def _gpt2_out(model: GPT, dtype: torch.dtype) -> tuple[dict, dict]:
    cfg = model.config
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
    hf_config = {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size, "n_ctx": cfg.block_size, "n_embd": cfg.n_embd, "n_layer": cfg.n_layer,
        "n_head": cfg.n_head, "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "initializer_range": 0.02,
        "bos_token_id": 50256, "eos_token_id": 50256, "tie_word_embeddings": True,
    }
    return tensors, hf_config


def _llama_out(model: GPT, dtype: torch.dtype) -> tuple[dict, dict]:
    """LlamaForCausalLM's tensors and config.json of a model whose options map onto it (hf_kind)."""
    cfg = model.config
    V, H, G, D, F = cfg.vocab_size, cfg.n_head, cfg.kv_heads, cfg.head_dim, cfg.hidden
    state = {k: v.detach().cpu().to(dtype) for k, v in model.state_dict().items()}
    out = {"model.embed_tokens.weight": state["transformer.wte.weight"][:V], "model.norm.weight":
           state["transformer.ln_f.weight"]}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"][:V]
    for i in range(cfg.n_layer):
        ours, theirs = f"transformer.h.{i}.", f"model.layers.{i}."
        out[theirs + "input_layernorm.weight"] = state[ours + "ln_1.weight"]
        out[theirs + "post_attention_layernorm.weight"] = state[ours + "ln_2.weight"]
        for kind in ("weight", "bias") if cfg.bias else ("weight",):
            q, k, v = state[f"{ours}attn.c_attn.{kind}"].split([H * D, G * D, G * D])
            gate, up = state[f"{ours}mlp.c_fc.{kind}"].split([F, F])
            out.update({f"{theirs}self_attn.q_proj.{kind}": q, f"{theirs}self_attn.k_proj.{kind}": k,
                        f"{theirs}self_attn.v_proj.{kind}": v,
                        f"{theirs}self_attn.o_proj.{kind}": state[f"{ours}attn.c_proj.{kind}"],
                        f"{theirs}mlp.gate_proj.{kind}": gate, f"{theirs}mlp.up_proj.{kind}": up,
                        f"{theirs}mlp.down_proj.{kind}": state[f"{ours}mlp.c_proj.{kind}"]})
    hf_config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": V, "hidden_size": cfg.n_embd,
        "intermediate_size": F, "num_hidden_layers": cfg.n_layer, "num_attention_heads": H,
        "num_key_value_heads": G, "head_dim": D, "hidden_act": "silu", "max_position_embeddings": cfg.block_size,
        "rms_norm_eps": RMS_EPS, "rope_theta": cfg.rope_theta,  # transformers 4.x reads rope_theta, 5.x:
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "attention_bias": cfg.bias, "mlp_bias": cfg.bias,  # mlp_bias: transformers >= 4.41
        "tie_word_embeddings": cfg.tie_embeddings, "attention_dropout": 0.0, "initializer_range": 0.02,
        "pretraining_tp": 1, "bos_token_id": 50256, "eos_token_id": 50256,
    }
    return {k: v.contiguous() for k, v in out.items()}, hf_config


def hf_config(path: str | Path) -> ModelConfig:
    """The model shape of a Hugging Face GPT-2 or Llama directory, from its config.json alone (no weights read)."""
    path = Path(path)
    if not path.is_dir():
        raise Gpt2pipeError(f"{path}: not a directory (expected a Hugging Face GPT-2 or Llama checkpoint)")
    if not (path / "config.json").is_file():
        raise Gpt2pipeError(f"{path}: no config.json, not a Hugging Face checkpoint")
    try:
        hf = json.loads((path / "config.json").read_text())
        if hf.get("model_type") == "llama":
            return _llama_config(path, hf)
        if hf.get("model_type") != "gpt2":
            raise Gpt2pipeError(f"{path}: model_type is {hf.get('model_type')!r}, not a GPT-2 or Llama checkpoint")
        if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
            raise Gpt2pipeError(f"{path}: activation {hf['activation_function']!r} is not GPT-2's tanh GELU")
        V = int(hf["vocab_size"])
        return ModelConfig(n_layer=int(hf["n_layer"]), n_head=int(hf["n_head"]), n_embd=int(hf["n_embd"]),
                           block_size=int(hf["n_positions"]), vocab_size=V, padded_vocab_size=padded(V))
    except (json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as e:
        raise Gpt2pipeError(f"{path / 'config.json'}: not a GPT-2 or Llama config ({type(e).__name__}: {e})") from None


def _llama_config(path: Path, hf: dict) -> ModelConfig:
    """Our options of a Llama config.json; one line for what our model cannot be (another norm eps, rope
    scaling, an activation other than SiLU, a head_dim that is not hidden_size / heads, mixed biases)."""
    rope = hf.get("rope_parameters") or {"rope_type": "default", "rope_theta": hf.get("rope_theta", 10000.0)}
    C, H = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    unlike = {
        "hidden_act": (hf.get("hidden_act", "silu"), "silu"),
        "rms_norm_eps": (float(hf.get("rms_norm_eps", RMS_EPS)), RMS_EPS),
        "rope type": (rope.get("rope_type", rope.get("type", "default")), "default"),
        "rope_scaling": (hf.get("rope_scaling"), None),
        "head_dim": (int(hf.get("head_dim") or C // H), C // H),
        "mlp_bias unlike attention_bias": (bool(hf.get("mlp_bias", False)), bool(hf.get("attention_bias", False))),
    }
    for key, (got, ours) in unlike.items():
        if got != ours:
            raise Gpt2pipeError(f"{path}: Llama {key} {got!r} has no counterpart in our model (needs {ours!r})")
    V, G = int(hf["vocab_size"]), int(hf.get("num_key_value_heads") or H)
    F, tied = int(hf["intermediate_size"]), bool(hf.get("tie_word_embeddings", False))  # Llama's default: untied
    cfg = ModelConfig(n_layer=int(hf["num_hidden_layers"]), n_head=H, n_embd=C,
                      block_size=int(hf["max_position_embeddings"]), vocab_size=V, padded_vocab_size=padded(V),
                      pos_embedding="rope", rope_theta=float(rope.get("rope_theta", 10000.0)), norm="rmsnorm",
                      mlp="swiglu", qk_norm=False, tie_embeddings=tied, bias=bool(hf.get("attention_bias", False)))
    # spelled out only where they differ from our defaults, so an export reads back as the config it came from
    return replace(cfg, n_kv_head=None if G == H else G, mlp_hidden=None if F == cfg.hidden else F)


def _llama_in(cfg: ModelConfig, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our names of a Llama state dict: q/k/v_proj packed into c_attn, gate/up_proj into c_fc."""
    w = {k.removeprefix("model."): v for k, v in weights.items()}
    state = {"transformer.wte.weight": w.get("embed_tokens.weight"), "transformer.ln_f.weight": w.get("norm.weight")}
    if not cfg.tie_embeddings:
        state["lm_head.weight"] = w.get("lm_head.weight")
    for i in range(cfg.n_layer):
        ours, theirs = f"transformer.h.{i}.", f"layers.{i}."
        state[ours + "ln_1.weight"] = w.get(theirs + "input_layernorm.weight")
        state[ours + "ln_2.weight"] = w.get(theirs + "post_attention_layernorm.weight")
        for kind in ("weight", "bias") if cfg.bias else ("weight",):
            parts = {n: w.get(f"{theirs}{n}.{kind}") for n in ("self_attn.q_proj", "self_attn.k_proj",
                     "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
            if (missing := [n for n, t in parts.items() if t is None]):
                raise Gpt2pipeError(f"missing tensors ['{theirs}{missing[0]}.{kind}', ...]")
            state[f"{ours}attn.c_attn.{kind}"] = torch.cat([parts[n] for n in ("self_attn.q_proj", "self_attn.k_proj",
                                                                              "self_attn.v_proj")])
            state[f"{ours}attn.c_proj.{kind}"] = parts["self_attn.o_proj"]
            state[f"{ours}mlp.c_fc.{kind}"] = torch.cat([parts["mlp.gate_proj"], parts["mlp.up_proj"]])
            state[f"{ours}mlp.c_proj.{kind}"] = parts["mlp.down_proj"]
    return {k: v for k, v in state.items() if v is not None}  # check_state names anything missing


def from_hf(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The config and our-layout state dict of a Hugging Face GPT-2 or Llama directory (safetensors only)."""
    from safetensors.torch import load_file

    path = Path(path)
    cfg = hf_config(path)
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise Gpt2pipeError(f"{path}: no model.safetensors (only safetensors weights are read)")
    if cfg.arch_changes():
        try:
            state = {k: v.float().contiguous() for k, v in _llama_in(cfg, load_file(str(weights))).items()}
        except Gpt2pipeError as e:
            raise Gpt2pipeError(f"{weights}: {e}") from None
        return cfg, _padded(str(weights), state, cfg)
    state = {}
    for k, v in load_file(str(weights)).items():
        k = k if k.startswith(("transformer.", "lm_head.")) else f"transformer.{k}"  # GPT2Model saves bare names
        if k.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # old checkpoints store the causal mask as a buffer
        if k.endswith(CONV1D):
            v = v.t()
        state[k] = v.float().contiguous()
    if state.get("transformer.wte.weight") is None:
        raise Gpt2pipeError(f"{weights}: no transformer.wte.weight")
    return cfg, _padded(str(weights), state, cfg)


def _padded(source: str, state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The vocabulary rows padded with zeros (as we and llm.c keep them), the tied head set, shapes checked."""
    V = cfg.vocab_size
    for k in ("transformer.wte.weight", "lm_head.weight"):
        t = state.get(k)
        if t is not None and t.shape[0] == V:
            state[k] = torch.cat([t, t.new_zeros(cfg.padded_vocab_size - V, t.shape[1])])
    if cfg.tie_embeddings and "transformer.wte.weight" in state:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    check_state(source, state, cfg)
    return state
