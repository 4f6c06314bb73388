"""GPT-2's MLP, proj(gelu(fc(x))), on the kernels path: bias+GELU as our kernel (kernels/gelu.cu, which can
also write an e4m3 copy of its output or gradient for an fp8 GEMM), or fused into cuBLASLt's GEMM
epilogues when training (EpilogueMlp)."""

from __future__ import annotations

import warnings

import torch
from torch.autograd.function import once_differentiable

from gpt2pipe.ops import FUSIONS, cublaslt, reference, use_kernels
from gpt2pipe.ops.cuda import aligned, launch
from gpt2pipe.ops.linear import column_grid, linear, weight_bias_grad


class BiasGelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, bias):
        h = h.contiguous()
        ctx.save_for_backward(h, bias)
        return bias_gelu_forward(h, bias)[0]

    @staticmethod
    def backward(ctx, dout):
        h, bias = ctx.saved_tensors
        dh, dbias, _ = bias_gelu_backward(dout, h, bias)
        return dh, dbias


def bias_gelu_forward(h, bias, fp8_target=None):
    """(gelu(h + bias), None) by our kernel (h contiguous); with an fp8_target the kernel also writes the
    e4m3 copy the next GEMM reads and returns it second (ops/fp8; 16-byte aligned tensors only)."""
    C = h.shape[-1]
    N = h.numel() // C
    out = torch.empty_like(h)
    vec, grid, threads = _gelu_grid(N, C, h, bias)
    if fp8_target is None:
        launch("gelu", f"bias_gelu_forward{vec}", grid, threads, out=out, h=h, bias=bias, N=N, C=C)
        return out, None
    out8 = torch.empty(h.shape, dtype=torch.float8_e4m3fn, device=h.device)
    launch("gelu", "bias_gelu_forward_fp8", grid, threads, out=out, out8=out8, inv_scale=fp8_target.inv_scale,
           amax_cur=fp8_target.amax_current, amax_prev=fp8_target.amax_previous, h=h, bias=bias, N=N, C=C)
    return out, out8


def bias_gelu_backward(dout, h, bias, fp8_target=None):
    """(dh, dbias, None) of gelu(h + bias); with an fp8_target also an fp8 copy of dh (its `dtype`: e5m2 or
    e4m3), third."""
    C = h.shape[-1]
    N = h.numel() // C
    dout = dout.contiguous()
    vec, grid, threads = _gelu_grid(N, C, h, bias, dout)
    dh = torch.empty_like(h)
    partials = torch.empty(grid[1], C, dtype=torch.float32, device=h.device)
    dh8 = None
    if fp8_target is None:
        launch("gelu", f"bias_gelu_backward{vec}", grid, threads, dh=dh, partials=partials, dout=dout, h=h,
               bias=bias, N=N, C=C)
    else:
        dh8 = torch.empty(h.shape, dtype=fp8_target.dtype, device=h.device)
        e5m2 = fp8_target.dtype == torch.float8_e5m2
        launch("gelu", "bias_gelu_backward_fp8" if e5m2 else "bias_gelu_backward_fp8_e4m3", grid, threads, dh=dh,
               dh8=dh8, inv_scale=fp8_target.inv_scale, amax_cur=fp8_target.amax_current,
               amax_prev=fp8_target.amax_previous, partials=partials, dout=dout, h=h, bias=bias, N=N, C=C)
    return dh, partials.sum(0).to(bias.dtype), dh8


def _gelu_grid(N: int, C: int, *tensors) -> tuple[str, tuple[int, int], int]:
    """(kernel suffix, grid, threads): the vectorised kernels where C and the tensors allow."""
    vec = C % 8 == 0 and aligned(*tensors)
    return ("_vec" if vec else ""), *column_grid(N, C, vec)


def bias_gelu(h, bias):
    return BiasGelu.apply(h, bias) if use_kernels(h) else reference.bias_gelu(h, bias)


class EpilogueMlp(torch.autograd.Function):
    """GPT-2's MLP with the bias+GELU inside the fc GEMM (cuBLASLt GELU_AUX_BIAS, which also keeps the GELU
    input for backward) and GELU's derivative inside the GEMM that makes the gradient of the GELU output
    (DGELU): no pass of their own over the 4C-wide activations. Bias gradients as linear.weight_bias_grad
    makes them."""

    @staticmethod
    def forward(ctx, x, fc_weight, fc_bias, proj_weight, proj_bias):
        x2 = x.reshape(-1, x.shape[-1])
        g, pre = cublaslt.linear_gelu(x2, fc_weight, fc_bias)
        ctx.save_for_backward(x2, pre, g, fc_weight, proj_weight)
        ctx.shape = x.shape
        return torch.addmm(proj_bias, g, proj_weight.t()).view(*x.shape[:-1], proj_weight.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x2, pre, g, fc_weight, proj_weight = ctx.saved_tensors
        dy2 = dy.reshape(-1, dy.shape[-1]).contiguous()
        d_proj_weight, d_proj_bias = weight_bias_grad(dy2, g)
        try:
            dpre = cublaslt.linear_dgelu(dy2, proj_weight, pre)
        except cublaslt.CublasLtError:  # no DGELU for this shape here: the GEMM, then our GELU backward
            dpre = bias_gelu_backward(dy2 @ proj_weight, pre, torch.zeros_like(pre[0]))[0]
        return (dpre @ fc_weight).view(ctx.shape), *weight_bias_grad(dpre, x2), d_proj_weight, d_proj_bias


def mlp(x, fc_weight, fc_bias, proj_weight, proj_bias):
    """GPT-2's MLP, proj(gelu(fc(x))): when training, bias+GELU fused into the fc GEMM and its derivative
    into proj's input-gradient GEMM where cuBLASLt can (EpilogueMlp); else (and for evaluation and sampling,
    whose changing shapes would each need a cuBLASLt plan) our bias+GELU kernel."""
    if FUSIONS["gelu_epilogue"] and torch.is_grad_enabled() and use_kernels(x):
        x = x.contiguous()
        if cublaslt.usable(x, fc_weight, fc_bias, proj_weight, proj_bias):
            try:
                return EpilogueMlp.apply(x, fc_weight, fc_bias, proj_weight, proj_bias)
            except cublaslt.CublasLtError as e:  # this cuBLASLt cannot fuse the shape: the kernel, from now on
                warnings.warn(f"{e}; the MLP's GELU runs in our kernel instead", stacklevel=2)
                FUSIONS["gelu_epilogue"] = False
    return linear(bias_gelu(torch.nn.functional.linear(x, fc_weight), fc_bias), proj_weight, proj_bias)
