"""GPT's forward through our CUDA kernels (GPT(cfg, ops="kernels")): the embedding, each residual add fused
into the norm after it (LayerNorm or RMSNorm), the activations, RoPE and the fused classifier are our kernels
(ops/); matmuls are cuBLAS (the speedrun MLP's two with ReLU^2 in them: Triton, ops/relu2_gemm.py) and
attention cuDNN. The parameters are model/gpt.py's, whose forward calls in here.
GPT-2 itself takes its own (benchmarked, fp8-capable) path; the model.arch options take ops/arch.py's kernels
where they ask for them, and no fp8.

fp8 GEMMs are a module swap (gpt2pipe.ops.fp8.convert_to_fp8) that this file knows only through what the
swapped modules have: `forward_kernels(x, x_fp8)` (an MLP that runs its own GEMMs), `projection(x, x_fp8)`
(a linear's fp8 forward GEMM) and `fp8_input_target(x)` (where the norm before it writes an e4m3 copy).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from gpt2pipe.ops import arch, relu2_gemm
from gpt2pipe.ops.attention import qkv_attention
from gpt2pipe.ops.classifier import fused_classifier
from gpt2pipe.ops.encoder import encoder
from gpt2pipe.ops.layernorm import layernorm, residual_layernorm
from gpt2pipe.ops.linear import linear
from gpt2pipe.ops.mlp import mlp as gelu_mlp


def forward(model: nn.Module, idx: torch.Tensor, targets: torch.Tensor | None):
    """(logits over the real vocabulary, None) without targets; (None, mean loss) with them: the fused
    classifier never makes the logits."""
    h = hidden(model, idx)
    vocab_size = model.config.vocab_size
    if targets is None:
        return F.linear(h, model.lm_head.weight)[..., :vocab_size], None
    logits_of = fp8_projection(model.lm_head, h, None) if model.gpt2 else None
    return None, fused_classifier(h, model.lm_head.weight, targets, vocab_size, logits_of)


def hidden(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    """The final norm's output [B, T, n_embd]."""
    return _gpt2_hidden(model, idx) if model.gpt2 else _arch_hidden(model, idx)


def _gpt2_hidden(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    """GPT-2 through our kernels, each block's residual add fused into the next LayerNorm."""
    tr = model.transformer
    x = encoder(idx, tr.wte.weight, tr.wpe.weight)
    h = layernorm(x, tr.h[0].ln_1.weight, tr.h[0].ln_1.bias)
    h_fp8 = None  # the first LayerNorm writes no fp8 copy: block 0's qkv GEMM stays bf16
    for i, block in enumerate(tr.h):
        last = i + 1 == len(tr.h)
        next_norm = tr.ln_f if last else tr.h[i + 1].ln_1
        next_linear = None if last else tr.h[i + 1].attn.c_attn
        if model.recompute and torch.is_grad_enabled():
            x, h, h_fp8 = torch.utils.checkpoint.checkpoint(gpt2_block, block, x, h, h_fp8, next_norm, next_linear,
                                                            False, use_reentrant=False,
                                                            context_fn=_same_attention_backend)
        else:
            x, h, h_fp8 = gpt2_block(block, x, h, h_fp8, next_norm, next_linear)
    return h


def _arch_hidden(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    """The kernels path of the model.arch options: as _gpt2_hidden, with ops/arch.py's RMSNorm, RoPE and
    activations where the options ask for them, and no fp8."""
    tr = model.transformer
    if "wpe" in tr:
        x = encoder(idx, tr.wte.weight, tr.wpe.weight)
    else:
        x = F.embedding(idx, tr.wte.weight)
    rope = model.rope_tables(idx.shape[1], idx.device)
    h = norm(x, tr.h[0].ln_1)
    for i, block in enumerate(tr.h):
        next_norm = tr.ln_f if i + 1 == len(tr.h) else tr.h[i + 1].ln_1
        if model.recompute and torch.is_grad_enabled():
            x, h = torch.utils.checkpoint.checkpoint(arch_block, block, x, h, rope, next_norm, False,
                                                     use_reentrant=False, context_fn=_same_attention_backend)
        else:
            x, h = arch_block(block, x, h, rope, next_norm)
    return h


def gpt2_block(block: nn.Module, x, h, h_fp8, next_norm: nn.LayerNorm, next_linear: nn.Module | None,
               packed: bool = True):
    """The block with each residual add fused into the LayerNorm after it. In: the residual stream x and
    h = ln_1(x) (h_fp8: its e4m3 copy, if the qkv linear asked for one). Out: the same triple for what
    follows, x + attn + mlp and next_norm of it (with the copy next_linear asks for). packed: see attention."""
    attn = attention(block.attn, h, h_fp8, packed=packed)
    x, h, h_fp8 = residual_layernorm(x, attn, block.ln_2.weight, block.ln_2.bias, fp8_input_target(block.mlp, x))
    y = mlp(block.mlp, h, h_fp8)
    return residual_layernorm(x, y, next_norm.weight, next_norm.bias,
                              None if next_linear is None else fp8_input_target(next_linear, x))


def arch_block(block: nn.Module, x, h, rope, next_norm: nn.Module, packed: bool = True):
    """gpt2_block for the model.arch options (no fp8): in x and h = ln_1(x), out x + attn + mlp and
    next_norm of it, each residual add fused into the norm after it (LayerNorm or RMSNorm)."""
    y = attention(block.attn, h, None, rope, packed)
    x, h = residual_norm(x, y, block.ln_2)
    return residual_norm(x, mlp(block.mlp, h), next_norm)


def attention(attn: nn.Module, x: torch.Tensor, x_fp8: torch.Tensor | None = None, rope=None,
              packed: bool = True) -> torch.Tensor:
    """A CausalSelfAttention. packed=False: not ops.attention's QkvAttention (under activation
    checkpointing; see qkv_attention)."""
    if rope is None and not attn.qk_norm and attn.n_kv_head == attn.n_head:  # GPT-2's: packed, no copies
        y = qkv_attention(x, attn.c_attn.weight, attn.c_attn.bias, attn.n_head,
                          fp8_projection(attn.c_attn, x, x_fp8), packed)
    else:
        y = attn.attend(linear(x, attn.c_attn.weight, attn.c_attn.bias), rope, arch)
    return linear(y, attn.c_proj.weight, attn.c_proj.bias)


def mlp(module: nn.Module, x: torch.Tensor, x_fp8: torch.Tensor | None = None) -> torch.Tensor:
    """An MLP; one swapped in by ops/fp8's converter runs its own forward_kernels (its fp8 GEMMs)."""
    own = getattr(module, "forward_kernels", None)
    if own is not None:
        return own(x, x_fp8)
    fc, proj = module.c_fc, module.c_proj
    if module.act == "gelu" and fc.bias is not None:  # GPT-2's: bias+GELU fused in one kernel
        return gelu_mlp(x, fc.weight, fc.bias, proj.weight, proj.bias)
    if module.act == "relu2" and fc.bias is None and proj.bias is None and relu2_gemm.usable(x, fc.weight, proj.weight):
        y = relu2_gemm.mlp(x, fc.weight, proj.weight)  # the speedrun's: ReLU^2 in the GEMMs' epilogues
        if y is not None:
            return y
    return linear(module.activation(linear(x, fc.weight, fc.bias), arch), proj.weight, proj.bias)


def norm(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """The norm module's function (LayerNorm or RMSNorm kernel)."""
    if isinstance(module, nn.LayerNorm):
        return layernorm(x, module.weight, module.bias)
    return arch.rmsnorm(x, module.weight, module.eps)


def residual_norm(residual: torch.Tensor, x: torch.Tensor, module: nn.Module):
    """(residual + x, norm of it) in one kernel: the add fused into the norm that follows it."""
    if isinstance(module, nn.LayerNorm):
        return residual_layernorm(residual, x, module.weight, module.bias)[:2]
    return arch.residual_rmsnorm(residual, x, module.weight, module.eps)


def fp8_input_target(module: nn.Module, x: torch.Tensor):
    """Where the LayerNorm that feeds `module` should also write an e4m3 copy of its output (LayerNorm of
    x): what a module swapped in by ops/fp8's converter asks for; None for every other module."""
    target = getattr(module, "fp8_input_target", None)
    return None if target is None else target(x)


def fp8_projection(module: nn.Module, x: torch.Tensor, x_fp8: torch.Tensor | None):
    """The fp8 forward GEMM of a linear swapped in by ops/fp8's converter, as a zero-argument callable (see
    ops.attention.qkv_attention); None for every other module, or where it runs in bf16."""
    projection = getattr(module, "projection", None)
    return None if projection is None else projection(x, x_fp8)


def _same_attention_backend():
    """Checkpointing's (forward, recompute) contexts: the recompute runs in backward, outside the caller's
    SDPA backend choice, and another backend saves other tensors (cuDNN's [B, H, T, 1] fp32 statistics, flash's
    [B, H, T]), which checkpointing refuses. Both run under the training loop's order."""
    from gpt2pipe.device import sdpa_fastest_first

    return sdpa_fastest_first(), sdpa_fastest_first()
