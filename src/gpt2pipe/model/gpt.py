"""GPT-2 in plain PyTorch (nanoGPT's shape, llm.c's initialisation and padded vocabulary)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from gpt2pipe.config import ModelConfig


def _kernel_ops():
    from gpt2pipe.ops import autograd

    return autograd


def fp8_input_target(module: nn.Module, x: torch.Tensor):
    """Where the LayerNorm that feeds `module` should also write an e4m3 copy of its output (LayerNorm of
    x): what a module swapped in by ops/fp8's converter asks for; None for every other module."""
    target = getattr(module, "fp8_input_target", None)
    return None if target is None else target(x)


def linear_kernels(linear: nn.Linear, x: torch.Tensor, x_fp8: torch.Tensor | None = None) -> torch.Tensor:
    """A linear layer on the kernels path: the layer's own `forward_kernels` when a converter gave it one
    (the fp8 qkv linear), else cuBLASLt with our bias-gradient kernel."""
    own = getattr(linear, "forward_kernels", None)
    if own is not None:
        return own(x, x_fp8)
    return _kernel_ops().linear(x, linear.weight, linear.bias)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.c_proj.residual = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self._attend(self.c_attn(x)))

    def forward_kernels(self, x: torch.Tensor, x_fp8: torch.Tensor | None = None) -> torch.Tensor:
        y = self._attend(linear_kernels(self.c_attn, x, x_fp8))
        return _kernel_ops().linear(y, self.c_proj.weight, self.c_proj.bias)

    def _attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """Causal multi-head attention of the packed q, k, v projections [B, T, 3C] -> [B, T, C]."""
        B, T, C3 = qkv.shape
        C = C3 // 3
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in qkv.split(C, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return y.transpose(1, 2).contiguous().view(B, T, C)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.c_proj.residual = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))

    def forward_kernels(self, x: torch.Tensor, x_fp8: torch.Tensor | None = None) -> torch.Tensor:
        return _kernel_ops().mlp(x, self.c_fc.weight, self.c_fc.bias, self.c_proj.weight, self.c_proj.bias)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))

    def forward_kernels(self, x, h, h_fp8, next_norm: nn.LayerNorm, next_linear: nn.Module | None):
        """The block with each residual add fused into the LayerNorm after it. In: the residual stream x and
        h = ln_1(x) (h_fp8: its e4m3 copy, if the qkv linear asked for one). Out: the same triple for what
        follows, x + attn + mlp and next_norm of it (with the copy next_linear asks for)."""
        K = _kernel_ops()
        attn = self.attn.forward_kernels(h, h_fp8)
        x, h, h_fp8 = K.residual_layernorm(x, attn, self.ln_2.weight, self.ln_2.bias, fp8_input_target(self.mlp, x))
        mlp = self.mlp.forward_kernels(h, h_fp8)
        return K.residual_layernorm(x, mlp, next_norm.weight, next_norm.bias,
                                    None if next_linear is None else fp8_input_target(next_linear, x))


class GPT(nn.Module):
    """GPT-2. `ops` picks how forward runs: "torch" (plain modules) or "kernels" (our CUDA kernels for the
    embedding, residual+LayerNorm, bias+GELU and the fused classifier; cuBLAS matmuls and cuDNN attention).
    Both use the same parameters, so checkpoints move freely between them. fp8 GEMMs are applied by
    `gpt2pipe.ops.fp8.convert_to_fp8(model)` (what `fp8=True` calls), a module swap this file knows only
    through the `forward_kernels` / `fp8_input_target` methods the swapped modules have."""

    def __init__(self, cfg: ModelConfig, ops: str = "torch", recompute: bool = False, fp8: bool = False):
        super().__init__()
        self.config = cfg
        self.ops = ops
        self.recompute = recompute  # kernels path: keep only block inputs, recompute the rest in backward
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.padded_vocab_size, cfg.n_embd),
            wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
            h=nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer)),
            ln_f=nn.LayerNorm(cfg.n_embd),
        ))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.padded_vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied, as in GPT-2
        self.apply(self._init_weights)
        with torch.no_grad():  # padding rows are never looked up or scored: zero, as llm.c exports them
            self.transformer.wte.weight[cfg.vocab_size :] = 0
        if fp8:  # shorthand for gpt2pipe.ops.fp8.convert_to_fp8(GPT(...)), which callers should prefer
            from gpt2pipe.ops.fp8 import convert_to_fp8

            convert_to_fp8(self)

    def _init_weights(self, module: nn.Module) -> None:
        # llm.c: N(0, 0.02) everywhere, residual projections scaled by 1/sqrt(2 * n_layer), biases 0
        if isinstance(module, nn.Linear):
            std = 0.02 / math.sqrt(2 * self.config.n_layer) if getattr(module, "residual", False) else 0.02
            if module is not self.lm_head:  # the head shares wte's weight, initialised below
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
            return self._forward_kernels(idx, targets)
        pos = torch.arange(T, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))[..., : self.config.vocab_size]
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction=reduction)
        return logits, loss if reduction != "none" else loss.view(B, T)

    def _forward_kernels(self, idx: torch.Tensor, targets: torch.Tensor | None):
        """The same network through our kernels, each block's residual add fused into the next LayerNorm."""
        K = _kernel_ops()
        tr = self.transformer
        x = K.encoder(idx, tr.wte.weight, tr.wpe.weight)
        h = K.layernorm(x, tr.h[0].ln_1.weight, tr.h[0].ln_1.bias)
        h_fp8 = None  # the first LayerNorm writes no fp8 copy: block 0's qkv GEMM stays bf16
        for i, block in enumerate(tr.h):
            last = i + 1 == len(tr.h)
            next_norm = tr.ln_f if last else tr.h[i + 1].ln_1
            next_linear = None if last else tr.h[i + 1].attn.c_attn
            if self.recompute and torch.is_grad_enabled():
                x, h, h_fp8 = torch.utils.checkpoint.checkpoint(block.forward_kernels, x, h, h_fp8, next_norm,
                                                                next_linear, use_reentrant=False)
            else:
                x, h, h_fp8 = block.forward_kernels(x, h, h_fp8, next_norm, next_linear)
        if targets is None:
            return F.linear(h, self.lm_head.weight)[..., : self.config.vocab_size], None
        return None, K.fused_classifier(h, self.lm_head.weight, targets, self.config.vocab_size)

    def num_params(self, embeddings: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n if embeddings else n - self.transformer.wpe.weight.numel()

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
