"""GPT-2 in plain PyTorch (nanoGPT's shape, llm.c's initialisation and padded vocabulary)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from gpt2pipe.config import ModelConfig


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.c_proj.residual = True

    def forward(self, x: torch.Tensor, linear=F.linear) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = linear(x, self.c_attn.weight, self.c_attn.bias).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return linear(y.transpose(1, 2).contiguous().view(B, T, C), self.c_proj.weight, self.c_proj.bias)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.c_proj.residual = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


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


class GPT(nn.Module):
    """GPT-2. `ops` picks how forward runs: "torch" (plain modules) or "kernels" (our CUDA kernels for the
    embedding, residual+LayerNorm, bias+GELU and the fused classifier; cuBLAS matmuls and cuDNN attention).
    Both use the same parameters, so checkpoints move freely between them."""

    def __init__(self, cfg: ModelConfig, ops: str = "torch", recompute: bool = False, fp8: bool = False):
        super().__init__()
        self.config = cfg
        self.ops = ops
        self.recompute = recompute  # kernels path: keep only block inputs, recompute the rest in backward
        self.fp8 = fp8  # kernels path: the MLP's GEMMs in fp8 where the GPU has them (ops/fp8.py)
        self._fp8_state = None
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
        """The same network, with each block's residual add fused into the following LayerNorm."""
        from gpt2pipe.ops import fp8
        from gpt2pipe.ops import autograd as K

        tr = self.transformer
        x = K.encoder(idx, tr.wte.weight, tr.wpe.weight)
        h = K.layernorm(x, tr.h[0].ln_1.weight, tr.h[0].ln_1.bias)
        fp8_state = self._fp8_micro_step(h)

        def slot(layer, k):
            """With fp8, where a LayerNorm writes the e4m3 copy of its output that the next GEMM reads."""
            return None if fp8_state is None else (fp8_state, layer, k)

        def block_step(i, block, nxt, x, h, h8):
            attn_linear = K.linear if h8 is None else qkv_fp8_linear(block, h8, i)
            x, h, *h8 = K.residual_layernorm(x, block.attn(h, linear=attn_linear), block.ln_2.weight,
                                             block.ln_2.bias, slot(i, fp8.H))
            mlp = block.mlp
            if fp8_state is not None:
                m = fp8.Fp8Mlp.apply(h, h8[0], mlp.c_fc.weight, mlp.c_fc.bias, mlp.c_proj.weight, mlp.c_proj.bias,
                                     fp8_state, i)
            else:
                m = K.linear(K.bias_gelu(F.linear(h, mlp.c_fc.weight), mlp.c_fc.bias), mlp.c_proj.weight,
                             mlp.c_proj.bias)
            last = i + 1 == len(tr.h)
            x, h, *h8 = K.residual_layernorm(x, m, nxt.weight, nxt.bias, None if last else slot(i + 1, fp8.X_QKV))
            return x, h, (h8[0] if h8 else None)

        def qkv_fp8_linear(block, h8, i):
            def linear(inp, w, b):
                if w is block.attn.c_attn.weight:
                    return fp8.Fp8Linear.apply(inp, h8, w, b, fp8_state, i)
                return K.linear(inp, w, b)

            return linear

        h8 = None  # the first block's input LayerNorm has no fp8 copy: its qkv GEMM stays bf16
        for i, block in enumerate(tr.h):
            nxt = tr.h[i + 1].ln_1 if i + 1 < len(tr.h) else tr.ln_f
            if self.recompute and torch.is_grad_enabled():
                x, h, h8 = torch.utils.checkpoint.checkpoint(block_step, i, block, nxt, x, h, h8, use_reentrant=False)
            else:
                x, h, h8 = block_step(i, block, nxt, x, h, h8)
        if targets is None:
            return F.linear(h, self.lm_head.weight)[..., : self.config.vocab_size], None
        return None, K.fused_classifier(h, self.lm_head.weight, targets, self.config.vocab_size)

    def _fp8_micro_step(self, h: torch.Tensor):
        """The fp8 scaling state, rolled to a new micro-step; None when fp8 is off or the GPU lacks it."""
        from gpt2pipe.ops import fp8

        mlps = [block.mlp for block in self.transformer.h]
        if not self.fp8 or not all(fp8.usable(h, m.c_fc.weight, m.c_proj.weight, m.c_fc.bias, m.c_proj.bias)
                                   for m in mlps):
            return None
        if self._fp8_state is None:
            self._fp8_state = fp8.Fp8State(self.config.n_layer, h.device)
        self._fp8_state.roll()
        return self._fp8_state

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
