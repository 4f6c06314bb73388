"""Our CUDA kernels as torch.autograd.Functions, and the dispatch between them and the torch references.

Each public function (encoder, layernorm, residual_layernorm, bias_gelu, mlp, linear, fused_classifier)
runs the kernel on CUDA tensors when kernels are available, and the reference from reference.py otherwise.

Kernels that also write an fp8 copy of their output for the next GEMM (LayerNorm forward, bias+GELU
forward and backward) take an `fp8_target`: any object with `inv_scale`, `amax_current`, `amax_previous`
(0-d float32 CUDA tensors: where the kernel writes 1/scale, where it records this call's amax, and the
amax the scale comes from) and `cast(x, dtype)` (a separate cast, for kernels without an fp8 output).
ops/fp8 makes them; this module never imports it, so there is no import cycle.
"""

from __future__ import annotations

import warnings

import torch
from torch.autograd.function import once_differentiable

from gpt2pipe.ops import kernels_available
from gpt2pipe.ops import cublaslt, reference
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


def _ln_forward(x, residual, w, b, fp8_target=None):
    """LayerNorm (of residual + x); with an fp8_target (see module docstring) also an e4m3 copy of the output."""
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
    """(residual + x, LayerNorm(residual + x)[, its e4m3 copy when an fp8_target is given])."""

    @staticmethod
    def forward(ctx, residual, x, w, b, fp8_target=None):
        out, mean, rstd, res_out, out8 = _ln_forward(x.contiguous(), residual.contiguous(), w, b, fp8_target)
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
    vec, grid, threads = _bias_gelu_grid(N, C, h, bias)
    if fp8_target is None:
        launch("gelu", f"bias_gelu_forward{vec}", grid, threads, out=out, h=h, bias=bias, N=N, C=C)
        return out, None
    out8 = torch.empty(h.shape, dtype=torch.float8_e4m3fn, device=h.device)
    launch("gelu", "bias_gelu_forward_fp8", grid, threads, out=out, out8=out8, inv_scale=fp8_target.inv_scale,
           amax_cur=fp8_target.amax_current, amax_prev=fp8_target.amax_previous, h=h, bias=bias, N=N, C=C)
    return out, out8


def bias_gelu_backward(dout, h, bias, fp8_target=None):
    """(dh, dbias, None) of gelu(h + bias); with an fp8_target also an e5m2 copy of dh, third."""
    C = h.shape[-1]
    N = h.numel() // C
    dout = dout.contiguous()
    vec, grid, threads = _bias_gelu_grid(N, C, h, bias, dout)
    dh = torch.empty_like(h)
    partials = torch.empty(grid[1], C, dtype=torch.float32, device=h.device)
    dh8 = None
    if fp8_target is None:
        launch("gelu", f"bias_gelu_backward{vec}", grid, threads, dh=dh, partials=partials, dout=dout, h=h,
               bias=bias, N=N, C=C)
    else:
        dh8 = torch.empty(h.shape, dtype=torch.float8_e5m2, device=h.device)
        launch("gelu", "bias_gelu_backward_fp8", grid, threads, dh=dh, dh8=dh8, inv_scale=fp8_target.inv_scale,
               amax_cur=fp8_target.amax_current, amax_prev=fp8_target.amax_previous, partials=partials,
               dout=dout, h=h, bias=bias, N=N, C=C)
    return dh, partials.sum(0).to(bias.dtype), dh8


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


class QkvAttention(torch.autograd.Function):
    """GPT-2's attention from its input up to the heads' output: qkv = x W^T + b, causal SDPA of its q, k, v
    (strided views of qkv, no copies), out [B, T, C].

    What it saves over autograd of those steps: SDPA's backward (cuDNN) returns dq, dk, dv each laid out
    [B, T, H, D] — a plain [B*T, C] matrix — and autograd then copies them into one packed dqkv for the
    linear's backward (a cat of 3 x B*T*C, ~2% of the 124M step on the H100). Here the linear's backward
    reads them where they are: dW's q, k and v row blocks are three GEMMs, dx = dq Wq + dk Wk + dv Wv
    accumulates in place (beta = 1). `project`, when given, computes qkv instead (the fp8 forward GEMM)."""

    @staticmethod
    def forward(ctx, x, weight, bias, n_head, project=None):
        B, T, C = x.shape
        qkv = project() if project is not None else torch.nn.functional.linear(x, weight, bias)
        D = C // n_head
        with torch.enable_grad():  # SDPA's own autograd, kept for backward
            q, k, v = (t.view(B, T, n_head, D).transpose(1, 2).detach().requires_grad_()
                       for t in qkv.split(C, dim=2))
            y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        ctx.attention = (q, k, v, y)
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return y.detach().transpose(1, 2).reshape(B, T, C)  # a view when SDPA wrote [B, T, H, D] (cuDNN)

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        q, k, v, y = ctx.attention
        ctx.attention = None
        x, weight = ctx.saved_tensors
        B, T, C = x.shape
        dy = dout.reshape(B, T, q.shape[1], q.shape[3]).transpose(1, 2)
        grads = torch.autograd.grad(y, (q, k, v), dy)
        parts = [g.transpose(1, 2).reshape(B * T, C) for g in grads]  # views for cuDNN's layout
        x2 = x.reshape(B * T, C)
        w_parts = weight.split(C)
        dw = torch.empty_like(weight)
        for g, dw_part in zip(parts, dw.split(C)):
            torch.mm(g.t(), x2, out=dw_part)
        dx = torch.mm(parts[0], w_parts[0])
        for g, w in zip(parts[1:], w_parts[1:]):
            dx.addmm_(g, w)
        db = torch.cat([bias_grad(g) for g in parts]) if ctx.has_bias else None
        return dx.view(B, T, C), dw, db, None, None


def qkv_attention(x, weight, bias, n_head: int, project=None, packed: bool = True):
    """Causal self-attention of GPT-2 (n_head q, k and v heads, packed qkv projection) from x to the heads'
    output [B, T, C], before the output projection: QkvAttention on the kernels path when training, else
    autograd through the split views and SDPA. packed=False keeps QkvAttention out: activation checkpointing
    (train.recompute) must not see it, because its backward runs SDPA's autograd as a graph of its own, which
    the checkpoint would recompute again and whose tensors it could not free."""
    if packed and FUSIONS["packed_qkv"] and torch.is_grad_enabled() and _use_kernels(x):
        return QkvAttention.apply(x.contiguous(), weight, bias, n_head, project)
    B, T, C = x.shape
    qkv = linear(x, weight, bias) if project is None else LinearBias.apply(x, weight, bias, project)
    q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in qkv.split(C, dim=2))
    y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    return y.transpose(1, 2).reshape(B, T, C)


class FusedClassifier(torch.autograd.Function):
    """Mean cross-entropy of h @ W.T over the real vocabulary; the gradients are computed in the forward
    pass, chunk by chunk (the logits of a chunk become its dlogits in place), so the full logits never exist.

    The weight gradient is a sum of one GEMM per chunk. It is summed in fp32 and cast to the weight's dtype
    once, in backward: summed in bf16 (dw_fp32 = False, what this did before), every chunk's addmm rounded
    the running sum again, an error that grows with the number of chunks (tests/test_classifier_fp32.py)."""

    dw_fp32 = True  # class-wide, so `gpt2pipe bench` can time both ways in one run (mode kernels-dw-bf16)
    _fp32_out: bool | None = None  # whether this torch has mm with an fp32 result for bf16 inputs

    @staticmethod
    def _mm_fp32(a, b):
        """a @ b in fp32 for bf16 a, b: cuBLAS accumulates in fp32 and, through aten's mm.dtype (torch 2.8+),
        writes the fp32 result unrounded. Older torch: the product rounded to bf16 once, then widened (the
        sum over chunks still stays fp32)."""
        if FusedClassifier._fp32_out is None:
            try:
                torch.ops.aten.mm.dtype(a[:8, :8], b[:8, :8], torch.float32)
                FusedClassifier._fp32_out = True
            except (AttributeError, RuntimeError, NotImplementedError):
                FusedClassifier._fp32_out = False
        if FusedClassifier._fp32_out:
            return torch.ops.aten.mm.dtype(a, b, torch.float32)
        return (a @ b).float()

    @staticmethod
    def forward(ctx, h, weight, targets, vocab_size, grad, logits_of=None):
        C = h.shape[-1]
        h2 = h.reshape(-1, C)
        t = targets.reshape(-1).contiguous()
        N, Vp = h2.shape[0], weight.shape[0]
        losses = torch.empty(N, dtype=torch.float32, device=h.device)
        dh = torch.empty_like(h2) if grad else None
        dw = None
        fp32 = FusedClassifier.dw_fp32
        for s in range(0, N, CLASSIFIER_CHUNK):
            e = min(N, s + CLASSIFIER_CHUNK)
            logits = h2[s:e] @ weight.t() if logits_of is None else logits_of(s, e)
            launch("classifier", "fused_classifier", e - s, 1024, logits, losses[s:e], t[s:e], vocab_size, Vp,
                   1.0 / N, int(grad))
            if grad:
                torch.mm(logits, weight, out=dh[s:e])
                if fp32:  # the first chunk's product is the sum so far: no add, no zero fill
                    part = FusedClassifier._mm_fp32(logits.t(), h2[s:e])
                    dw = part if dw is None else dw.add_(part)
                else:
                    dw = logits.t() @ h2[s:e] if dw is None else dw.addmm_(logits.t(), h2[s:e])
        ctx.grads = (dh.view_as(h) if grad else None, dw)
        ctx.weight_dtype = weight.dtype
        return losses.mean()

    @staticmethod
    def backward(ctx, dloss):
        dh, dw = ctx.grads
        ctx.grads = None
        # scaled while still fp32, then rounded once to the weight's dtype
        return dh * dloss.to(dh.dtype), (dw * dloss.to(dw.dtype)).to(ctx.weight_dtype), None, None, None, None


def encoder(idx, wte, wpe):
    return Encoder.apply(idx, wte, wpe) if _use_kernels(wte) else reference.encoder(idx, wte, wpe)


def layernorm(x, w, b):
    return LayerNorm.apply(x, w, b) if _use_kernels(x) else reference.layernorm(x, w, b, EPS)


def residual_layernorm(residual, x, w, b, fp8_target=None):
    """(residual + x, its LayerNorm, the LayerNorm's e4m3 copy or None): the copy is made only on the
    kernels path and only when an fp8_target asks for it."""
    if _use_kernels(x):
        res, out, *copy = ResidualLayerNorm.apply(residual, x, w, b, fp8_target)
        return res, out, (copy[0] if copy else None)
    return (*reference.residual_layernorm(residual, x, w, b, EPS), None)


def linear(x, weight, bias):
    if bias is not None and _use_kernels(x):
        return LinearBias.apply(x, weight, bias)
    return torch.nn.functional.linear(x, weight, bias)


def bias_gelu(h, bias):
    return BiasGelu.apply(h, bias) if _use_kernels(h) else reference.bias_gelu(h, bias)


class EpilogueMlp(torch.autograd.Function):
    """GPT-2's MLP with the bias+GELU inside the fc GEMM (cuBLASLt GELU_AUX_BIAS, which also keeps the GELU
    input for backward) and GELU's derivative inside the GEMM that makes the gradient of the GELU output
    (DGELU): no pass of their own over the 4C-wide activations. Bias gradients by our column-sum kernel."""

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
        d_proj_weight, d_proj_bias = dy2.t() @ g, bias_grad(dy2)
        try:
            dpre = cublaslt.linear_dgelu(dy2, proj_weight, pre)
        except cublaslt.CublasLtError:  # no DGELU for this shape here: the GEMM, then our GELU backward
            dpre = bias_gelu_backward(dy2 @ proj_weight, pre, torch.zeros_like(pre[0]))[0]
        return (dpre @ fc_weight).view(ctx.shape), dpre.t() @ x2, bias_grad(dpre), d_proj_weight, d_proj_bias


# The fusions of the GPT-2 kernels path that have an unfused way beside them, on unless switched off here
# (module-wide, so `gpt2pipe bench` can time both in one run: mode kernels-unfused). gelu_epilogue: the MLP's
# bias+GELU inside its GEMMs (EpilogueMlp; our bias+GELU kernel otherwise); packed_qkv: QkvAttention
# (autograd through split views and SDPA otherwise).
FUSIONS = {"gelu_epilogue": True, "packed_qkv": True}


def mlp(x, fc_weight, fc_bias, proj_weight, proj_bias):
    """GPT-2's MLP, proj(gelu(fc(x))): when training, bias+GELU fused into the fc GEMM and its derivative
    into proj's input-gradient GEMM where cuBLASLt can (EpilogueMlp); else (and for evaluation and sampling,
    whose changing shapes would each need a cuBLASLt plan) our bias+GELU kernel. Bias gradients by our
    column-sum kernel."""
    if FUSIONS["gelu_epilogue"] and torch.is_grad_enabled() and _use_kernels(x):
        x = x.contiguous()
        if cublaslt.usable(x, fc_weight, fc_bias, proj_weight, proj_bias):
            try:
                return EpilogueMlp.apply(x, fc_weight, fc_bias, proj_weight, proj_bias)
            except cublaslt.CublasLtError as e:  # this cuBLASLt cannot fuse the shape: the kernel, from now on
                warnings.warn(f"{e}; the MLP's GELU runs in our kernel instead", stacklevel=2)
                FUSIONS["gelu_epilogue"] = False
    return linear(bias_gelu(torch.nn.functional.linear(x, fc_weight), fc_bias), proj_weight, proj_bias)


def fused_classifier(h, weight, targets, vocab_size: int, logits_of=None):
    """Mean cross-entropy of h @ W.T over the real vocabulary. logits_of(start, end), when given, computes
    the logits of rows start:end instead (the fp8 head); kernels path only."""
    if _use_kernels(h) and weight.shape[0] % 8 == 0:
        grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
        return FusedClassifier.apply(h, weight, targets, vocab_size, grad, logits_of)
    return reference.classifier(h, weight, targets, vocab_size)
