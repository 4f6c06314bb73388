"""Linear layers with a bias on the kernels path: cuBLAS(Lt) GEMMs with the bias in the forward epilogue,
and the bias gradient from our column-sum kernel (kernels/bias_grad.cu) instead of a generic reduction, or
from the weight-gradient GEMM's epilogue (FUSIONS["bgrad_epilogue"]). column_grid is the launch layout of
every kernel that sums over rows per column (bias_grad, bias+GELU)."""

from __future__ import annotations

import warnings

import torch

from gpt2pipe.ops import FUSIONS, cublaslt, use_kernels
from gpt2pipe.ops.cuda import aligned, launch, sm_count


class LinearBias(torch.autograd.Function):
    """y = x @ W.T + b (cuBLASLt with its bias epilogue, or `project()` where given: the fp8 qkv GEMM, which
    has no autograd of its own); backward takes db from our column-sum kernel instead of a generic
    reduction."""

    @staticmethod
    def forward(ctx, x, weight, bias, project=None):
        ctx.save_for_backward(x, weight)
        return torch.nn.functional.linear(x, weight, bias) if project is None else project()

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        return (*linear_backward(dy, x, weight), None)


def linear_backward(dy, x, weight):
    """(dx, dW, db) of y = x @ W.T + b."""
    dy2 = dy.reshape(-1, dy.shape[-1])
    x2 = x.reshape(-1, x.shape[-1])
    return (dy2 @ weight).view_as(x), *weight_bias_grad(dy2, x2)


def weight_bias_grad(dy, x, dw=None, db=None):
    """(dW, db) of y = x W^T + b for dy [N, M], x [N, K]: one cuBLASLt GEMM with the bias gradient in its
    epilogue where FUSIONS["bgrad_epilogue"] asks and the tensors allow, else the GEMM and our column-sum
    kernel. Written into dw [M, K] and db [M] where given."""
    if FUSIONS["bgrad_epilogue"] and cublaslt.usable(dy, x, *(t for t in (dw, db) if t is not None)):
        try:
            return cublaslt.weight_bias_grad(dy, x, dw, db)
        except cublaslt.CublasLtError as e:  # this cuBLASLt cannot fuse the shape: the kernel, from now on
            warnings.warn(f"{e}; bias gradients come from our column-sum kernel instead", stacklevel=2)
            FUSIONS["bgrad_epilogue"] = False
    return torch.mm(dy.t(), x, out=dw), bias_grad(dy, out=db)


def bias_grad(dy: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """dy [N, C] summed over its rows, in dy's dtype (into `out` where given)."""
    N, C = dy.shape
    if C % 8 or not aligned(dy):
        total = dy.sum(0)
    else:
        dy = dy.contiguous()
        grid, threads = column_grid(N, C, vec=True)
        partials = torch.empty(grid[1], C, dtype=torch.float32, device=dy.device)
        launch("bias_grad", "bias_grad", grid, threads, partials, dy, N, C)
        total = partials.sum(0)
    return total.to(dy.dtype) if out is None else out.copy_(total)


def column_grid(N: int, C: int, vec: bool) -> tuple[tuple[int, int], int]:
    """(grid, threads) of the kernels that sum over rows per column: x tiles the columns (8 per thread when
    vectorised, vec), y strides rows."""
    threads = 128 if vec else 256
    cols = (C // (8 if vec else 1) + threads - 1) // threads
    return (cols, max(1, min(N, sm_count() * 16 // cols))), threads


def linear(x, weight, bias):
    if bias is not None and use_kernels(x):
        return LinearBias.apply(x, weight, bias)
    return torch.nn.functional.linear(x, weight, bias)
