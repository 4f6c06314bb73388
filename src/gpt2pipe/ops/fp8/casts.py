"""The fp8 cast kernels (kernels/fp8.cu) on torch tensors, and the scaled GEMM that consumes their output.

Casts scale by powers of two (kernels/fp8.cuh): activations and gradients from the amax their slot had at
the previous micro-step (delayed scaling, recorded by the producing kernel: no extra pass, no host sync),
weights from their own amax right now (current scaling).
"""

from __future__ import annotations

import torch

from gpt2pipe.ops.cuda import launch, sm_count

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
CAST_KERNELS = {E4M3: "cast_e4m3", E5M2: "cast_e5m2"}


def _grid(vectors: int) -> int:
    return max(1, min((vectors + 255) // 256, sm_count() * 8))


def record_amax(x: torch.Tensor, amax: torch.Tensor) -> None:
    """max(amax, max |x|) into the 0-d float32 `amax` (x: bf16, a multiple of 8 elements, 16-byte aligned)."""
    vectors = x.numel() // 8
    launch("fp8", "amax_bf16", _grid(vectors), 256, amax=amax, x=x, n8=vectors)


def cast(x: torch.Tensor, dtype: torch.dtype, inv_scale: torch.Tensor, amax_current: torch.Tensor,
         amax_previous: torch.Tensor) -> torch.Tensor:
    """x (bf16) in fp8 `dtype`, scaled from amax_previous; records x's amax in amax_current and the scale's
    inverse in inv_scale (what the GEMM multiplies back)."""
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    vectors = x.numel() // 8
    launch("fp8", CAST_KERNELS[dtype], _grid(vectors), 256, out=out, inv_scale=inv_scale, amax_cur=amax_current,
           x=x, amax_prev=amax_previous, n8=vectors)
    return out


def weight_copies(w: torch.Tensor, inv_scale: torch.Tensor, amax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(w8, w8t): e4m3 copies of W and W^T scaled by W's own amax (measured here into `amax`); 1/scale
    goes to inv_scale. The forward GEMM reads w8, the input-gradient GEMM w8t."""
    amax.zero_()
    record_amax(w, amax)
    rows, cols = w.shape
    w8 = torch.empty(rows, cols, dtype=E4M3, device=w.device)
    w8t = torch.empty(cols, rows, dtype=E4M3, device=w.device)
    launch("fp8", "weight_fp8", ((cols + 31) // 32, (rows + 31) // 32), (32, 8), w8=w8, w8t=w8t, inv_scale=inv_scale,
           w=w, amax=amax, rows=rows, cols=cols)
    return w8, w8t


def cast_current(x: torch.Tensor, dtype: torch.dtype, inv_scale: torch.Tensor, amax: torch.Tensor,
                 scratch: torch.Tensor) -> torch.Tensor:
    """x in fp8 `dtype` scaled by its own amax, measured here into `amax` (current scaling: no state carried
    between calls); 1/scale goes to inv_scale, `scratch` takes the cast kernel's own amax record."""
    amax.zero_()
    record_amax(x, amax)
    scratch.zero_()
    return cast(x, dtype, inv_scale, scratch, amax)


def scaled_mm(a8: torch.Tensor, b8: torch.Tensor, inv_scale_a, inv_scale_b, bias=None) -> torch.Tensor:
    """a8 @ b8 * inv_scale_a * inv_scale_b (+ bias) in bf16: cuBLASLt's fp8 GEMM through torch."""
    return torch._scaled_mm(a8, b8, scale_a=inv_scale_a, scale_b=inv_scale_b, bias=bias, out_dtype=torch.bfloat16)
