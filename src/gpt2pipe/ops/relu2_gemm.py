"""The speedrun model's MLP, proj(relu(fc(x))^2) without biases, with ReLU^2 inside its GEMMs (Triton, which
ships with torch on CUDA; the kernel is in relu2_gemm_triton.py): the fc GEMM's epilogue writes its output and
relu(.)^2 of it, and the GEMM that makes the activation's gradient multiplies by 2 relu(pre) in its epilogue.
cuBLASLt does this for GPT-2's GELU (ops/mlp.EpilogueMlp) but has no ReLU^2 epilogue; without one the
activation costs two passes of its own over the 4C-wide tensors (the relu2 kernels: 47 ms of the speedrun
model's ~935 ms step on an H200).

Both GEMMs round their product to bf16 before the epilogue, as the unfused path's GEMM output is, so they
compute what cuBLAS + ops/arch.relu2 compute up to the GEMMs' summation order. The other three GEMMs of the
MLP stay cuBLAS. Used when training on the kernels path, bf16, on sm_90+ with Triton, the widths multiples of 8
(ops.FUSIONS["relu2_epilogue"]; elsewhere cuBLAS + our relu2 kernels); a kernel Triton fails to build warns
once and the unfused path takes over. In the training loop it saves 16-17 ms of the speedrun model's ~910 ms
step on an H200, although as a GEMM it is slower than cuBLAS (docs/speedrun.md)."""

from __future__ import annotations

import functools
import warnings

import torch
from torch.autograd.function import once_differentiable

from gpt2pipe.ops import arch


@functools.cache
def available() -> bool:
    """Triton importable and a CUDA GPU with TMA (compute capability 9.0 or newer)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (9, 0)


def _launch(a, b, c, d, backward: bool) -> None:
    from gpt2pipe.ops import relu2_gemm_triton  # imports Triton: only where it is

    relu2_gemm_triton.launch(a, b, c, d, backward)


def fc_relu2(x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pre, act): pre = x @ weight.T and act = relu(pre)^2, bf16 [M, N]; x [M, K], weight [N, K], both as
    usable() takes them (K and N multiples of 8, 16-byte aligned)."""
    pre = torch.empty(x.shape[0], weight.shape[0], dtype=x.dtype, device=x.device)
    act = torch.empty_like(pre)
    _launch(x, weight, pre, act, False)
    return pre, act


def drelu2(dy: torch.Tensor, weight: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
    """d pre = (dy @ weight) * 2 relu(pre): the gradient through proj (weight [C, F]) and the activation."""
    dpre = torch.empty_like(pre)
    _launch(dy, weight.t().contiguous(), dpre, pre, True)  # [F, C]: the kernels read B as [N, K]
    return dpre


class Relu2Mlp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, fc_weight, proj_weight):
        x2 = x.reshape(-1, x.shape[-1])
        pre, act = fc_relu2(x2, fc_weight)
        ctx.save_for_backward(x2, pre, act, fc_weight, proj_weight)
        ctx.shape = x.shape
        return (act @ proj_weight.t()).view(*x.shape[:-1], proj_weight.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x2, pre, act, fc_weight, proj_weight = ctx.saved_tensors
        dy2 = dy.reshape(-1, dy.shape[-1]).contiguous()
        if dy2.data_ptr() % 16:  # a view at an odd offset: TMA needs an aligned base
            dy2 = dy2.clone()
        dpre = _or_none(drelu2, dy2, proj_weight, pre)  # the backward kernel is built at its first use, here
        if dpre is None:  # what the unfused path computes: cuBLAS, then the relu2 backward
            dpre = arch.relu2_backward(dy2 @ proj_weight, pre)
        return (dpre @ fc_weight).view(ctx.shape), dpre.t() @ x2, dy2.t() @ act


def usable(x: torch.Tensor, fc_weight: torch.Tensor, proj_weight: torch.Tensor) -> bool:
    from gpt2pipe.ops import FUSIONS

    return (FUSIONS["relu2_epilogue"] and torch.is_grad_enabled() and x.is_cuda and available()
            and x.dtype == fc_weight.dtype == proj_weight.dtype == torch.bfloat16
            and x.shape[-1] % 8 == 0 and x.data_ptr() % 16 == 0 and _tma_ok(fc_weight, proj_weight))


def _tma_ok(*tensors: torch.Tensor) -> bool:
    from gpt2pipe.ops import relu2_gemm_triton

    return relu2_gemm_triton.tma_ok(*tensors)


def _or_none(fn, *args):
    """fn(*args), or None where Triton could not build or run a kernel here (a Triton or driver too old): then
    a warning, once, and the fusion off from now on. Running out of memory is not that."""
    try:
        return fn(*args)
    except torch.OutOfMemoryError:
        raise
    except Exception as e:  # noqa: BLE001 — a speed-up only: the unfused path computes the same
        from gpt2pipe.ops import FUSIONS

        warnings.warn(f"the ReLU^2 GEMMs failed ({type(e).__name__}: {e}); the MLP runs unfused", stacklevel=3)
        FUSIONS["relu2_epilogue"] = False
        return None


def mlp(x: torch.Tensor, fc_weight: torch.Tensor, proj_weight: torch.Tensor) -> torch.Tensor | None:
    """proj(relu(fc(x))^2) through Relu2Mlp (call where usable() says so), or None where Triton failed (the
    caller runs the MLP unfused)."""
    return _or_none(Relu2Mlp.apply, x.contiguous(), fc_weight, proj_weight)
