"""The LLaMA-style architecture's operations (model.arch options): our kernels on CUDA, the torch
references in reference.py everywhere else. Same contract as ops/autograd.py: each public function runs
its kernel on CUDA tensors when kernels are available and the reference otherwise.

The kernels are still to come: every function below runs its reference for now.
"""

from __future__ import annotations

import torch

from gpt2pipe.ops import reference

RMS_EPS = 1e-6


def rmsnorm(x: torch.Tensor, w: torch.Tensor | None, eps: float = RMS_EPS) -> torch.Tensor:
    return reference.rmsnorm(x, w, eps)


def residual_rmsnorm(residual: torch.Tensor, x: torch.Tensor, w: torch.Tensor | None, eps: float = RMS_EPS):
    """(residual + x, RMSNorm(residual + x))."""
    return reference.residual_rmsnorm(residual, x, w, eps)


def qkv_rope(qkv: torch.Tensor, n_head: int, n_kv_head: int, cos: torch.Tensor, sin: torch.Tensor,
             qk_norm: bool, eps: float = RMS_EPS):
    """Packed qkv [B, T, (H + 2G) D] -> q [B, H, T, D], k, v [B, G, T, D]: QK-norm (optional) and RoPE."""
    return reference.qkv_rope(qkv, n_head, n_kv_head, cos, sin, qk_norm, eps)


def swiglu(h: torch.Tensor) -> torch.Tensor:
    return reference.swiglu(h)


def relu2(h: torch.Tensor) -> torch.Tensor:
    return reference.relu2(h)
