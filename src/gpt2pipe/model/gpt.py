"""GPT-2 in plain PyTorch (nanoGPT's shape, llm.c's initialisation and padded vocabulary), with the model.arch
options beside it: rotary positions, RMSNorm, SwiGLU / ReLU² MLPs, QK-norm, grouped-query attention, an
untied head and bias-free linears (rope + rmsnorm + swiglu + bias false is LLaMA's block). The GPT-2 defaults
build exactly GPT-2. `ops="kernels"` runs the same parameters through our CUDA kernels (model/kernels_path.py)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt2pipe.config import ModelConfig
from gpt2pipe.model import kernels_path
from gpt2pipe.ops import reference

RMS_EPS = 1e-6
_SDPA_GQA = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)  # enable_gqa came in torch 2.5


class RMSNorm(nn.Module):
    """RMSNorm with a learnable gain (LLaMA's), eps 1e-6, computed in fp32."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = RMS_EPS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return reference.rmsnorm(x, self.weight, self.eps)


def make_norm(cfg: ModelConfig) -> nn.Module:
    return RMSNorm(cfg.n_embd) if cfg.norm == "rmsnorm" else nn.LayerNorm(cfg.n_embd)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention of q [B, H, T, D] over k, v [B, G, T, D]; G < H: each kv head serves H/G query heads."""
    H, G = q.shape[1], k.shape[1]
    if G == H:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if _SDPA_GQA:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    return F.scaled_dot_product_attention(q, k.repeat_interleave(H // G, 1), v.repeat_interleave(H // G, 1),
                                          is_causal=True)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.qk_norm = cfg.n_head, cfg.kv_heads, cfg.qk_norm
        # packed [q | k | v]: n_head query heads, n_kv_head key and value heads (3 * n_embd without GQA)
        self.c_attn = nn.Linear(cfg.n_embd, (cfg.n_head + 2 * cfg.kv_heads) * cfg.head_dim, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.c_proj.residual = True

    def forward(self, x: torch.Tensor, rope=None) -> torch.Tensor:
        return self.c_proj(self.attend(self.c_attn(x), rope, reference))

    def attend(self, qkv: torch.Tensor, rope, ops) -> torch.Tensor:
        """Causal attention of the packed q, k, v projections [B, T, (H + 2G) D] -> [B, T, H D]; rope: the
        (cos, sin) tables, or None for learned positions; ops: reference.py or ops/arch.py (same functions)."""
        B, T, _ = qkv.shape
        H, G = self.n_head, self.n_kv_head
        D = qkv.shape[-1] // (H + 2 * G)
        if rope is not None:
            q, k, v = ops.qkv_rope(qkv, H, G, *rope, self.qk_norm, RMS_EPS)
        else:
            # split first, then view each as heads: q, k, v are strided views of qkv and their gradients
            # land in one packed buffer in one copy (viewing the heads first and splitting that costs
            # backward a second full copy of dqkv: ~7% of the 124M step on the H100)
            q, k, v = (t.view(B, T, -1, D).transpose(1, 2) for t in qkv.split([H * D, G * D, G * D], dim=2))
            if self.qk_norm:  # (contiguous: a row per head, as a norm kernel reads it)
                q, k = ops.rmsnorm(q.contiguous(), None, RMS_EPS), ops.rmsnorm(k.contiguous(), None, RMS_EPS)
        return attention(q, k, v).transpose(1, 2).contiguous().view(B, T, H * D)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.act = cfg.mlp
        width = 2 * cfg.hidden if cfg.mlp == "swiglu" else cfg.hidden  # swiglu: packed [gate | up]
        self.c_fc = nn.Linear(cfg.n_embd, width, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.hidden, cfg.n_embd, bias=cfg.bias)
        self.c_proj.residual = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.activation(self.c_fc(x), reference))

    def activation(self, h: torch.Tensor, ops) -> torch.Tensor:
        if self.act == "swiglu":
            return ops.swiglu(h)
        return ops.relu2(h) if self.act == "relu2" else F.gelu(h, approximate="tanh")


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = make_norm(cfg)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = make_norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, rope=None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), rope)
        return x + self.mlp(self.ln_2(x))

class GPT(nn.Module):
    """GPT-2 and its model.arch variants. `ops` picks how forward runs: "torch" (plain modules) or "kernels"
    (model/kernels_path.py: our CUDA kernels for the embedding, residual+norm, the activations, RoPE and the
    fused classifier; cuBLAS matmuls and cuDNN attention). Both use the same parameters, so checkpoints move
    freely between them. fp8 GEMMs (GPT-2's blocks only) are applied by `gpt2pipe.ops.fp8.convert_to_fp8(model)`
    (what `fp8=True` calls), a module swap that only the kernels path sees."""

    def __init__(self, cfg: ModelConfig, ops: str = "torch", recompute: bool = False, fp8: bool = False):
        super().__init__()
        if problem := cfg.problem(fp8):  # a shape built in code or read from a file, not through the schema
            raise problem
        self.config = cfg
        self.ops = ops
        self.recompute = recompute  # kernels path: keep only block inputs, recompute the rest in backward
        self.gpt2 = not cfg.arch_changes()  # GPT-2 itself: its own (benchmarked, fp8-capable) kernels path
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.padded_vocab_size, cfg.n_embd),
            **({"wpe": nn.Embedding(cfg.block_size, cfg.n_embd)} if cfg.pos_embedding == "learned" else {}),
            h=nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer)),
            ln_f=make_norm(cfg),
        ))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.padded_vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight  # tied, as in GPT-2
        self.apply(self._init_weights)
        with torch.no_grad():  # padding rows are never looked up or scored: zero, as llm.c exports them
            self.transformer.wte.weight[cfg.vocab_size :] = 0
            self.lm_head.weight[cfg.vocab_size :] = 0
        if fp8:  # shorthand for gpt2pipe.ops.fp8.convert_to_fp8(GPT(...)), which callers should prefer
            from gpt2pipe.ops.fp8 import convert_to_fp8

            convert_to_fp8(self)

    def _init_weights(self, module: nn.Module) -> None:
        # llm.c: N(0, 0.02) everywhere, residual projections scaled by 1/sqrt(2 * n_layer), biases 0
        if isinstance(module, nn.Linear):
            std = 0.02 / math.sqrt(2 * self.config.n_layer) if getattr(module, "residual", False) else 0.02
            if module is not self.lm_head or not self.config.tie_embeddings:  # a tied head is wte, done below
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, reduction: str = "mean"):
        """Logits over the real vocabulary (padding columns dropped) and, given targets, the loss."""
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence of {T} tokens is longer than block_size {self.config.block_size}")
        if self.ops == "kernels" and reduction == "mean":
            return kernels_path.forward(self, idx, targets)
        logits = self.lm_head(self._hidden_torch(idx))[..., : self.config.vocab_size]
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction=reduction)
        return logits, loss if reduction != "none" else loss.view(B, T)

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        """The final norm's output [B, T, n_embd] on this model's ops path: what the head reads (the LM head
        for logits, a value head in RL)."""
        if self.ops == "kernels":
            return kernels_path.hidden(self, idx)
        return self._hidden_torch(idx)

    def _hidden_torch(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.transformer.wte(idx)
        if "wpe" in self.transformer:
            x = x + self.transformer.wpe(torch.arange(idx.shape[1], device=idx.device))
        rope = self.rope_tables(idx.shape[1], idx.device)
        for block in self.transformer.h:
            x = block(x, rope)
        return self.transformer.ln_f(x)

    def rope_tables(self, T: int, device: torch.device):
        """RoPE's (cos, sin) [T, head_dim / 2], fp32 (also under autocast, and with bf16 weights), or None
        for learned positions. Made per forward: a few tiny kernels, and no buffer in the state dict."""
        c = self.config
        if c.pos_embedding != "rope":
            return None
        with torch.autocast(device.type, enabled=False):
            return reference.rope_tables(T, c.head_dim, c.rope_theta, device)

    def num_params(self, embeddings: bool = True) -> int:
        """All parameters (a tied head once); embeddings=False leaves out the lookups that are no matmul: the
        position embedding, and the token embedding when the head does not share it."""
        n = sum(p.numel() for p in self.parameters())
        if embeddings:
            return n
        if "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        if not self.config.tie_embeddings:
            n -= self.transformer.wte.weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (PaLM appendix B): 6N for the weights plus 12*L*T*C for attention."""
        c = self.config
        return 6 * self.num_params(embeddings=False) + 12 * c.n_layer * c.n_embd * seq_len


# OpenAI GPT-2 sizes, for the report's baselines
GPT2_SIZES = {
    "124M": ModelConfig(n_layer=12, n_head=12, n_embd=768),
    "350M": ModelConfig(n_layer=24, n_head=16, n_embd=1024),
    "774M": ModelConfig(n_layer=36, n_head=20, n_embd=1280),
    "1558M": ModelConfig(n_layer=48, n_head=25, n_embd=1600),
}


def gpt2_size_name(cfg: ModelConfig) -> str | None:
    for name, size in GPT2_SIZES.items():
        if (size.n_layer, size.n_embd) == (cfg.n_layer, cfg.n_embd):
            return name
    return None
