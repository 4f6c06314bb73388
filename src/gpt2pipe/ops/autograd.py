"""Our CUDA kernels as torch.autograd.Functions, and the dispatch between them and the torch references.

Each public function (encoder, layernorm, residual_layernorm, bias_gelu, fused_classifier) runs the
kernel on CUDA tensors when kernels are available, and the reference from reference.py otherwise.
"""

from __future__ import annotations

import torch

from gpt2pipe.ops import kernels_available
from gpt2pipe.ops import reference
from gpt2pipe.ops.cuda import aligned, launch, sm_count

LN_MAX_VEC_C = 8 * 32 * 8  # layernorm_*_vec keep a row in registers: C up to 2048

EPS = 1e-5
# tokens per logits chunk (16384 x 50304 bf16 = 1.6 GB): bounds the classifier's memory at any micro-batch.
# On the H100, 16384, 32768 and 65536 gave the same step time (963.8 / 960.5 / 963.5 ms), so the smallest.
CLASSIFIER_CHUNK = 16384


def _blocks(n: int, threads: int = 256, cap: int = 65535 * 8) -> int:
    return max(1, min((n + threads - 1) // threads, cap))


def _use_kernels(*tensors: torch.Tensor) -> bool:
    return all(t.is_cuda for t in tensors) and kernels_available()


class Encoder(torch.autograd.Function):
    @staticmethod
    def forward(ctx, idx, wte, wpe):
        idx = idx.contiguous()
        B, T = idx.shape
        C = wte.shape[1]
        out = torch.empty(B, T, C, dtype=wte.dtype, device=wte.device)
        if C % 8 == 0 and aligned(wte, wpe):
            launch("encoder", "encoder_forward_vec", _blocks(B * T * C // 8), 256, out, idx, wte, wpe, B * T, T, C)
        else:
            launch("encoder", "encoder_forward", _blocks(B * T * C), 256, out, idx, wte, wpe, B * T, T, C)
        ctx.save_for_backward(idx)
        ctx.shapes = (wte.shape, wpe.shape)
        return out

    @staticmethod
    def backward(ctx, dout):
        (idx,) = ctx.saved_tensors
        dout = dout.contiguous()
        B, T = idx.shape
        wte_shape, wpe_shape = ctx.shapes
        C = wte_shape[1]
        # group positions by token (stable sort): each token's rows are summed by one block, in order
        sorted_tok, order = torch.sort(idx.view(-1), stable=True)
        dwte = torch.zeros(wte_shape, dtype=dout.dtype, device=dout.device)
        launch("encoder", "encoder_backward_wte_sorted", B * T, 256, dwte, dout, order, sorted_tok, B * T, C)
        dwpe = torch.zeros(wpe_shape, dtype=dout.dtype, device=dout.device)
        launch("encoder", "encoder_backward_wpe", _blocks(T * C), 256, dwpe, dout, B, T, C)
        return None, dwte, dwpe


def _ln_forward(x, residual, w, b, fp8_slot=None):
    """LayerNorm (of residual + x); with fp8_slot = (Fp8State, layer, slot) also an e4m3 copy of the output."""
    C = x.shape[-1]
    N = x.numel() // C
    out = torch.empty_like(x)
    mean = torch.empty(N, dtype=torch.float32, device=x.device)
    rstd = torch.empty(N, dtype=torch.float32, device=x.device)
    res_out = torch.empty_like(x) if residual is not None else None
    vec = _ln_vec(C, x, residual, w, b)
    out8, extra = None, ()
    if fp8_slot is not None and vec:
        state, layer, slot = fp8_slot
        out8 = torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device)
        extra = (out8, state.inv[layer, slot], state.cur[layer, slot], state.prev[layer, slot])
    elif vec:
        extra = (None, None, None, None)
    launch("layernorm", f"layernorm_forward{vec}", (N + 7) // 8, 256, out, mean, rstd, res_out, x, residual, w, b,
           N, C, EPS, *extra)
    if fp8_slot is not None and out8 is None:  # the scalar kernel has no fp8 output: cast apart
        from gpt2pipe.ops.fp8 import E4M3, cast

        out8 = cast(out, E4M3, *fp8_slot)
    return out, mean, rstd, res_out, out8


def _ln_backward(dout, dres, inp, mean, rstd, w):
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
        out, mean, rstd, _, _ = _ln_forward(x, None, w, b)
        ctx.save_for_backward(x, mean, rstd, w)
        return out

    @staticmethod
    def backward(ctx, dout):
        x, mean, rstd, w = ctx.saved_tensors
        dx, dw, db = _ln_backward(dout, None, x, mean, rstd, w)
        return dx, dw, db


class ResidualLayerNorm(torch.autograd.Function):
    """(residual + x, LayerNorm(residual + x)[, its e4m3 copy when fp8_slot is given])."""

    @staticmethod
    def forward(ctx, residual, x, w, b, fp8_slot=None):
        out, mean, rstd, res_out, out8 = _ln_forward(x.contiguous(), residual.contiguous(), w, b, fp8_slot)
        ctx.save_for_backward(res_out, mean, rstd, w)
        if out8 is None:
            return res_out, out
        ctx.mark_non_differentiable(out8)
        return res_out, out, out8

    @staticmethod
    def backward(ctx, dres, dout, _=None):
        res_out, mean, rstd, w = ctx.saved_tensors
        dx, dw, db = _ln_backward(dout, dres, res_out, mean, rstd, w)
        return dx, dx, dw, db, None


class BiasGelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, bias):
        h = h.contiguous()
        ctx.save_for_backward(h, bias)
        return bias_gelu_forward(h, bias)

    @staticmethod
    def backward(ctx, dout):
        h, bias = ctx.saved_tensors
        return bias_gelu_backward(dout, h, bias)


def bias_gelu_forward(h, bias, fp8=None):
    """gelu(h + bias) by our kernel (h contiguous). fp8 = (out8, inv_scale, amax_cur, amax_prev): the
    kernel also writes the e4m3 copy out8 for the next GEMM (ops/fp8.py; 16-byte aligned tensors only)."""
    C = h.shape[-1]
    N = h.numel() // C
    out = torch.empty_like(h)
    vec, grid, threads = _bias_gelu_grid(N, C, h, bias)
    if fp8 is None:
        launch("gelu", f"bias_gelu_forward{vec}", grid, threads, out, h, bias, N, C)
    else:
        launch("gelu", "bias_gelu_forward_fp8", grid, threads, out, *fp8, h, bias, N, C)
    return out


def bias_gelu_backward(dout, h, bias, fp8=None):
    """(dh, dbias) of gelu(h + bias); fp8 = (dh8, inv_scale, amax_cur, amax_prev) as in bias_gelu_forward,
    with an e5m2 copy of dh."""
    C = h.shape[-1]
    N = h.numel() // C
    dout = dout.contiguous()
    vec, grid, threads = _bias_gelu_grid(N, C, h, bias, dout)
    dh = torch.empty_like(h)
    partials = torch.empty(grid[1], C, dtype=torch.float32, device=h.device)
    if fp8 is None:
        launch("gelu", f"bias_gelu_backward{vec}", grid, threads, dh, partials, dout, h, bias, N, C)
    else:
        launch("gelu", "bias_gelu_backward_fp8", grid, threads, dh, *fp8, partials, dout, h, bias, N, C)
    return dh, partials.sum(0).to(bias.dtype)


class LinearBias(torch.autograd.Function):
    """y = x @ W.T + b (cuBLASLt with its bias epilogue); backward takes db from our column-sum kernel
    instead of a generic reduction."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        return torch.nn.functional.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        return linear_backward(dy, x, weight)


def linear_backward(dy, x, weight):
    """(dx, dW, db) of y = x @ W.T + b, with db from our column-sum kernel."""
    dy2 = dy.reshape(-1, dy.shape[-1])
    x2 = x.reshape(-1, x.shape[-1])
    return (dy2 @ weight).view_as(x), dy2.t() @ x2, bias_grad(dy2)


def bias_grad(dy: torch.Tensor) -> torch.Tensor:
    N, C = dy.shape
    if C % 8 or not aligned(dy):
        return dy.sum(0)
    dy = dy.contiguous()
    _, grid, threads = _bias_gelu_grid(N, C, dy)  # same layout: 8 columns per thread, rows strided
    partials = torch.empty(grid[1], C, dtype=torch.float32, device=dy.device)
    launch("bias_grad", "bias_grad", grid, threads, partials, dy, N, C)
    return partials.sum(0).to(dy.dtype)


def _bias_gelu_grid(N: int, C: int, *tensors) -> tuple[str, tuple[int, int], int]:
    """(kernel suffix, grid, threads): x tiles the columns (8 per thread when vectorised), y strides rows."""
    vec = C % 8 == 0 and aligned(*tensors)
    threads = 128 if vec else 256
    cols = (C // (8 if vec else 1) + threads - 1) // threads
    return ("_vec" if vec else ""), (cols, max(1, min(N, sm_count() * 16 // cols))), threads


class FusedClassifier(torch.autograd.Function):
    """Mean cross-entropy of h @ W.T over the real vocabulary; the gradients are computed in the forward
    pass, chunk by chunk (the logits of a chunk become its dlogits in place), so the full logits never exist."""

    @staticmethod
    def forward(ctx, h, weight, targets, vocab_size, grad):
        C = h.shape[-1]
        h2 = h.reshape(-1, C)
        t = targets.reshape(-1).contiguous()
        N, Vp = h2.shape[0], weight.shape[0]
        losses = torch.empty(N, dtype=torch.float32, device=h.device)
        dh = torch.empty_like(h2) if grad else None
        dw = None
        for s in range(0, N, CLASSIFIER_CHUNK):
            e = min(N, s + CLASSIFIER_CHUNK)
            logits = h2[s:e] @ weight.t()
            launch("classifier", "fused_classifier", e - s, 1024, logits, losses[s:e], t[s:e], vocab_size, Vp,
                   1.0 / N, int(grad))
            if grad:
                torch.mm(logits, weight, out=dh[s:e])
                dw = logits.t() @ h2[s:e] if dw is None else dw.addmm_(logits.t(), h2[s:e])
        ctx.grads = (dh.view_as(h) if grad else None, dw)
        return losses.mean()

    @staticmethod
    def backward(ctx, dloss):
        dh, dw = ctx.grads
        ctx.grads = None
        return dh * dloss.to(dh.dtype), dw * dloss.to(dw.dtype), None, None, None


def encoder(idx, wte, wpe):
    return Encoder.apply(idx, wte, wpe) if _use_kernels(wte) else reference.encoder(idx, wte, wpe)


def layernorm(x, w, b):
    return LayerNorm.apply(x, w, b) if _use_kernels(x) else reference.layernorm(x, w, b, EPS)


def residual_layernorm(residual, x, w, b, fp8_slot=None):
    """(residual + x, its LayerNorm); with fp8_slot (kernels only) also the LayerNorm's e4m3 copy."""
    if _use_kernels(x):
        return ResidualLayerNorm.apply(residual, x, w, b, fp8_slot)
    return reference.residual_layernorm(residual, x, w, b, EPS)


def linear(x, weight, bias):
    if bias is not None and _use_kernels(x):
        return LinearBias.apply(x, weight, bias)
    return torch.nn.functional.linear(x, weight, bias)


def bias_gelu(h, bias):
    return BiasGelu.apply(h, bias) if _use_kernels(h) else reference.bias_gelu(h, bias)


def fused_classifier(h, weight, targets, vocab_size: int):
    if _use_kernels(h) and weight.shape[0] % 8 == 0:
        grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
        return FusedClassifier.apply(h, weight, targets, vocab_size, grad)
    return reference.classifier(h, weight, targets, vocab_size)
