"""Plain-torch references of every custom kernel: the CPU path, and the ground truth in kernel tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def encoder(idx: torch.Tensor, wte: torch.Tensor, wpe: torch.Tensor) -> torch.Tensor:
    return wte[idx] + wpe[: idx.shape[1]]


def layernorm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), w, b, eps)


def residual_layernorm(residual, x, w, b, eps: float = 1e-5):
    """(residual + x, LayerNorm(residual + x)): the pre-LN block's add and the next norm."""
    r = residual + x
    return r, F.layer_norm(r, (r.shape[-1],), w, b, eps)


def bias_gelu(h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.gelu(h + bias, approximate="tanh")


def classifier(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Mean cross-entropy of the logits h @ weight.T over the real (unpadded) vocabulary."""
    logits = (h @ weight.t())[..., :vocab_size]
    return F.cross_entropy(logits.float().flatten(0, -2), targets.flatten())


def norm_and_scale(norm: torch.Tensor, max_norm: float) -> torch.Tensor:
    """[norm, clip factor] for a global gradient norm (torch's clip_grad_norm_ rule; max_norm <= 0: no clip)."""
    scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0) if max_norm > 0 else torch.ones_like(norm)
    return torch.stack([norm, scale])


def global_norm_scale(grads: torch.Tensor, max_norm: float) -> torch.Tensor:
    """[norm, clip factor] as global_norm.cu computes them."""
    return norm_and_scale(torch.linalg.vector_norm(grads.float()), max_norm)


def adamw_update(params, master, m, v, grads, clip, n_decay: int, lr: float, beta1: float, beta2: float,
                 step: int, eps: float, weight_decay: float) -> None:
    """In-place AdamW on flat buffers with fp32 master weights, as adamw.cu does (round to nearest)."""
    g = grads.float() * clip[1]
    m.mul_(beta1).add_(g, alpha=1 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    master[:n_decay].mul_(1 - lr * weight_decay)
    denom = (v.sqrt() / (1 - beta2**step) ** 0.5).add_(eps)
    master.addcdiv_(m, denom, value=-lr / (1 - beta1**step))
    params.copy_(master.to(params.dtype))
