"""The speedrun model's MLP, proj(relu(fc(x))^2) without biases, with ReLU^2 inside its GEMMs (Triton, which
ships with torch on CUDA): the fc GEMM's epilogue writes its output and relu(.)^2 of it, and the GEMM that
makes the activation's gradient multiplies by 2 relu(pre) in its epilogue. cuBLASLt does this for GPT-2's
GELU (ops/mlp.EpilogueMlp) but has no ReLU^2 epilogue; without one the activation costs two passes of its own
over the 4C-wide tensors (the relu2 kernels: 47 ms of the speedrun model's ~935 ms step on an H200).

Both GEMMs round their product to bf16 before the epilogue, as the unfused path's GEMM output is, so they
compute what cuBLAS + ops/arch.relu2 compute up to the GEMMs' summation order. The other three GEMMs of the
MLP stay cuBLAS. Used when training on the kernels path, bf16, Triton importable (ops.FUSIONS["relu2_epilogue"]);
a kernel Triton fails to build warns once and the unfused path takes over."""

from __future__ import annotations

import functools

import torch
from torch.autograd.function import once_differentiable

# Hopper/Ampere tile shapes; autotuned once per (M, N, K, direction): the training loop's shapes are fixed
_CONFIGS = [  # (BLOCK_M, BLOCK_N, BLOCK_K, stages, warps)
    (128, 256, 64, 3, 8), (256, 128, 64, 3, 8), (128, 128, 64, 4, 4), (128, 128, 64, 4, 8),
    (128, 256, 64, 4, 8), (64, 256, 64, 4, 4), (128, 64, 64, 4, 4),
]


@functools.cache
def available() -> bool:
    """Triton importable and a CUDA GPU of compute capability 8.0 or newer (bf16 tensor cores)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8}, num_stages=s, num_warps=w)
               for m, n, k, s, w in _CONFIGS]

    @triton.autotune(configs=configs, key=["M", "N", "K", "BACKWARD"])
    @triton.jit
    def gemm_relu2(a_ptr, b_ptr, c_ptr, d_ptr, M, N, K, stride_am, stride_ak, stride_bk, stride_bn,
                   BACKWARD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
        """C = A @ B (M x N, row-major, as D). Forward: C = the product, D = relu(C)^2. Backward: D holds
        the pre-activation, C = the product * 2 relu(D)."""
        pid = tl.program_id(0)
        num_m, num_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
        in_group = GROUP_M * num_n  # grouped order: neighbouring programs share A rows in L2
        first_m = (pid // in_group) * GROUP_M
        size_m = min(num_m - first_m, GROUP_M)
        pid_m = first_m + (pid % in_group) % size_m
        pid_n = (pid % in_group) // size_m
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        a = a_ptr + rm[:, None].to(tl.int64) * stride_am + rk[None, :] * stride_ak
        b = b_ptr + rk[:, None] * stride_bk + rn[None, :].to(tl.int64) * stride_bn
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, tl.cdiv(K, BLOCK_K)):
            left = K - k * BLOCK_K
            x = tl.load(a, mask=(rm[:, None] < M) & (rk[None, :] < left), other=0.0)
            y = tl.load(b, mask=(rk[:, None] < left) & (rn[None, :] < N), other=0.0)
            acc = tl.dot(x, y, acc)
            a += BLOCK_K * stride_ak
            b += BLOCK_K * stride_bk
        h = acc.to(tl.bfloat16).to(tl.float32)  # what the unfused GEMM hands the activation
        mask = (rm[:, None] < M) & (rn[None, :] < N)
        at = rm[:, None].to(tl.int64) * N + rn[None, :]
        if BACKWARD:
            pre = tl.load(d_ptr + at, mask=mask, other=0.0).to(tl.float32)
            tl.store(c_ptr + at, (h * 2.0 * tl.maximum(pre, 0.0)).to(tl.bfloat16), mask=mask)
        else:
            r = tl.maximum(h, 0.0)
            tl.store(c_ptr + at, h.to(tl.bfloat16), mask=mask)
            tl.store(d_ptr + at, (r * r).to(tl.bfloat16), mask=mask)

    return triton, gemm_relu2


def _launch(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor, backward: bool) -> None:
    triton, kernel = _kernel()
    (M, K), N = a.shape, b.shape[1]

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)

    kernel[grid](a, b, c, d, M, N, K, a.stride(0), a.stride(1), b.stride(0), b.stride(1), BACKWARD=backward)


def fc_relu2(x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pre, act): pre = x @ weight.T and act = relu(pre)^2, bf16 [M, N]; x [M, K] contiguous, weight [N, K]."""
    pre = torch.empty(x.shape[0], weight.shape[0], dtype=x.dtype, device=x.device)
    act = torch.empty_like(pre)
    _launch(x, weight.t(), pre, act, backward=False)
    return pre, act


def drelu2(dy: torch.Tensor, weight: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
    """d pre = (dy @ weight) * 2 relu(pre): the gradient through proj (weight [C, F]) and the activation."""
    dpre = torch.empty_like(pre)
    _launch(dy, weight, dpre, pre, backward=True)
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
        dpre = drelu2(dy2, proj_weight, pre)
        return (dpre @ fc_weight).view(ctx.shape), dpre.t() @ x2, dy2.t() @ act


def usable(x: torch.Tensor, fc_weight: torch.Tensor, proj_weight: torch.Tensor) -> bool:
    from gpt2pipe.ops import FUSIONS

    return (FUSIONS["relu2_epilogue"] and torch.is_grad_enabled() and x.is_cuda and available()
            and x.dtype == fc_weight.dtype == proj_weight.dtype == torch.bfloat16
            and fc_weight.is_contiguous() and proj_weight.is_contiguous())


def mlp(x: torch.Tensor, fc_weight: torch.Tensor, proj_weight: torch.Tensor) -> torch.Tensor:
    """proj(relu(fc(x))^2) through Relu2Mlp (call where usable() says so)."""
    return Relu2Mlp.apply(x.contiguous(), fc_weight, proj_weight)
