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


# --- the LLaMA-style architecture's pieces (model.arch options; kernels in ops/arch.py) ---


def rmsnorm(x: torch.Tensor, w: torch.Tensor | None, eps: float = 1e-6) -> torch.Tensor:
    """x / rms(x) [* w], computed in fp32 and returned in x's dtype (w None: no gain, as QK-norm uses)."""
    y = F.rms_norm(x.float(), (x.shape[-1],), None if w is None else w.float(), eps)
    return y.to(x.dtype)


def residual_rmsnorm(residual, x, w, eps: float = 1e-6):
    """(residual + x, RMSNorm(residual + x)): the pre-norm block's add and the next norm."""
    r = residual + x
    return r, rmsnorm(r, w, eps)


def rope_tables(seq_len: int, head_dim: int, theta: float = 10000.0, device=None):
    """(cos, sin), each [seq_len, head_dim // 2] fp32: Hugging Face Llama's rotary frequencies."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32, device=device), inv_freq)
    return angles.cos(), angles.sin()


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x [B, H, T, D] in Hugging Face Llama's half-split layout (rotate_half):
    (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin), x1/x2 the first/second half of D; fp32 math."""
    T, half = x.shape[-2], x.shape[-1] // 2
    c, s = cos[:T], sin[:T]
    x1, x2 = x.float()[..., :half], x.float()[..., half:]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)


def qkv_rope(qkv: torch.Tensor, n_head: int, n_kv_head: int, cos, sin, qk_norm: bool, eps: float = 1e-6):
    """Packed projections [B, T, (n_head + 2 n_kv_head) * D] -> q [B, n_head, T, D], k and v
    [B, n_kv_head, T, D] (contiguous, SDPA's layout): q and k RMS-normed per head (no gain) when qk_norm,
    then rotated; v copied."""
    B, T, _ = qkv.shape
    D = qkv.shape[-1] // (n_head + 2 * n_kv_head)
    q, k, v = qkv.view(B, T, n_head + 2 * n_kv_head, D).transpose(1, 2).split([n_head, n_kv_head, n_kv_head], 1)
    if qk_norm:
        q, k = rmsnorm(q, None, eps), rmsnorm(k, None, eps)
    return rope(q, cos, sin).contiguous(), rope(k, cos, sin).contiguous(), v.contiguous()


def swiglu(h: torch.Tensor) -> torch.Tensor:
    """[..., 2F] = [gate | up] -> silu(gate) * up [..., F] (fp32 math)."""
    gate, up = h.float().chunk(2, dim=-1)
    return (F.silu(gate) * up).to(h.dtype)


def relu2(h: torch.Tensor) -> torch.Tensor:
    """relu(h)^2 (modded-nanogpt's MLP activation)."""
    return F.relu(h).square()


def relu2_backward(dout: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """d h of relu(h)^2 given d out: 2 relu(h) d out in fp32, rounded once (as kernels/activation.cu)."""
    return (dout.float() * 2 * h.float().clamp_min(0)).to(h.dtype)
