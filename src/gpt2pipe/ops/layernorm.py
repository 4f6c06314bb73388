"""LayerNorm, alone and with the residual add before it fused in, through kernels/layernorm.cu: the
vectorised kernels keep a row in registers (C up to LN_MAX_VEC_C), the scalar ones take any width. The
residual form can also write an e4m3 copy of its output for the fp8 GEMM that follows (an fp8_target)."""

from __future__ import annotations

import torch

from gpt2pipe.ops import reference, use_kernels
from gpt2pipe.ops.cuda import aligned, launch, sm_count

LN_MAX_VEC_C = 8 * 32 * 8  # layernorm_*_vec keep a row in registers: C up to 2048
EPS = 1e-5


def layernorm_forward(x, residual, w, b, fp8_target=None):
    """LayerNorm (of residual + x); with an fp8_target (see ops/__init__.py) also an e4m3 copy of the output."""
    C = x.shape[-1]
    N = x.numel() // C
    out = torch.empty_like(x)
    mean = torch.empty(N, dtype=torch.float32, device=x.device)
    rstd = torch.empty(N, dtype=torch.float32, device=x.device)
    res_out = torch.empty_like(x) if residual is not None else None
    vec = _ln_vec(C, x, residual, w, b)
    out8 = None
    args = (out, mean, rstd, res_out, x, residual, w, b, N, C, EPS)
    if not vec:
        launch("layernorm", "layernorm_forward", (N + 7) // 8, 256, *args)
        if fp8_target is not None:  # the scalar kernel has no fp8 output: cast apart
            out8 = fp8_target.cast(out, torch.float8_e4m3fn)
    elif fp8_target is None:
        launch("layernorm", f"layernorm_forward{vec}", (N + 7) // 8, 256, *args, out8=None, inv_scale=None,
               amax_cur=None, amax_prev=None)
    else:
        out8 = torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device)
        launch("layernorm", f"layernorm_forward{vec}", (N + 7) // 8, 256, *args, out8=out8,
               inv_scale=fp8_target.inv_scale, amax_cur=fp8_target.amax_current,
               amax_prev=fp8_target.amax_previous)
    return out, mean, rstd, res_out, out8


def layernorm_backward(dout, dres, inp, mean, rstd, w):
    C = inp.shape[-1]
    N = inp.numel() // C
    warps = 4
    grid = max(1, min((N + warps - 1) // warps, sm_count() * 8))
    dx = torch.empty_like(inp)
    partials = torch.empty(grid, 2 * C, dtype=torch.float32, device=inp.device)
    dout = dout.contiguous()
    dres = None if dres is None else dres.contiguous()
    vec = _ln_vec(C, dout, dres, inp, w)
    launch("layernorm", f"layernorm_backward{vec}", grid, 32 * warps, dx, partials, dout, dres, inp, mean, rstd,
           w, N, C, shared_mem=warps * 2 * C * 4)
    sums = partials.sum(0)
    return dx, sums[:C].to(w.dtype), sums[C:].to(w.dtype)


def _ln_vec(C: int, *tensors) -> str:
    """Kernel-name suffix: `_vecV` (V = 16-byte vectors per lane) when the row fits, else the scalar kernel."""
    if C % 8 == 0 and C <= LN_MAX_VEC_C and aligned(*tensors):
        return f"_vec{(C + 255) // 256}"
    return ""


class LayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b):
        x = x.contiguous()
        out, mean, rstd, _, _ = layernorm_forward(x, None, w, b)
        ctx.save_for_backward(x, mean, rstd, w)
        return out

    @staticmethod
    def backward(ctx, dout):
        x, mean, rstd, w = ctx.saved_tensors
        dx, dw, db = layernorm_backward(dout, None, x, mean, rstd, w)
        return dx, dw, db


class ResidualLayerNorm(torch.autograd.Function):
    """(residual + x, LayerNorm(residual + x)[, its e4m3 copy when an fp8_target is given])."""

    @staticmethod
    def forward(ctx, residual, x, w, b, fp8_target=None):
        out, mean, rstd, res_out, out8 = layernorm_forward(x.contiguous(), residual.contiguous(), w, b, fp8_target)
        ctx.save_for_backward(res_out, mean, rstd, w)
        if out8 is None:
            return res_out, out
        ctx.mark_non_differentiable(out8)
        return res_out, out, out8

    @staticmethod
    def backward(ctx, dres, dout, _=None):
        res_out, mean, rstd, w = ctx.saved_tensors
        dx, dw, db = layernorm_backward(dout, dres, res_out, mean, rstd, w)
        return dx, dx, dw, db, None


def layernorm(x, w, b):
    return LayerNorm.apply(x, w, b) if use_kernels(x) else reference.layernorm(x, w, b, EPS)


def residual_layernorm(residual, x, w, b, fp8_target=None):
    """(residual + x, its LayerNorm, the LayerNorm's e4m3 copy or None): the copy is made only on the
    kernels path and only when an fp8_target asks for it."""
    if use_kernels(x):
        res, out, *copy = ResidualLayerNorm.apply(residual, x, w, b, fp8_target)
        return res, out, (copy[0] if copy else None)
    return (*reference.residual_layernorm(residual, x, w, b, EPS), None)
