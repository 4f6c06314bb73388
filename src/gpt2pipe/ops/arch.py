"""The LLaMA-style architecture's operations (model.arch options): our kernels on CUDA, the torch
references in reference.py everywhere else. Same contract as GPT-2's op modules (ops/__init__.py): each
public function runs its kernel on CUDA tensors when kernels are available and the reference otherwise.

The kernels (kernels/rmsnorm.cu, rope.cu, activation.cu) take bf16 or fp32 tensors and compute in fp32;
other dtypes (fp16, fp64) run the reference. RMSNorm gains are handed to the kernels in fp32, as the
reference upcasts them, and their gradient is returned in the gain's own dtype.
"""

from __future__ import annotations

import torch

from gpt2pipe.ops import kernels_available
from gpt2pipe.ops import reference
from gpt2pipe.ops.cuda import aligned, launch, sm_count

RMS_EPS = 1e-6

# kernel-name suffix of each dtype the kernels take, and its elements per 16-byte access
_SUFFIX = {torch.bfloat16: "bf16", torch.float32: "f32"}
_VEC = {torch.bfloat16: 8, torch.float32: 4}
# RMSNorm backward keeps a float per column per warp in shared memory for dw: beyond this width, the reference
RMS_MAX_C = 32768
_ROWS_PER_BLOCK = 8  # warps of the one-warp-per-row kernels (256 threads)


def _use_kernels(*tensors: torch.Tensor, also=()) -> bool:
    """Kernels for these tensors: all on CUDA, one dtype the kernels take, and kernels available. `also`:
    tensors of any dtype (or None) that must be on CUDA too (a gain, the rotary tables)."""
    return (all(t.is_cuda for t in tensors) and all(t is None or t.is_cuda for t in also)
            and tensors[0].dtype in _SUFFIX and all(t.dtype == tensors[0].dtype for t in tensors)
            and kernels_available())


def _name(base: str, dtype: torch.dtype, vec: bool = False) -> str:
    """The entry point of `base` for dtype: rmsnorm_forward_vec_bf16, swiglu_backward_f32, ..."""
    return f"{base}{'_vec' if vec else ''}_{_SUFFIX[dtype]}"


def _grid(n: int, threads: int = 256) -> int:
    """Blocks of a grid-stride elementwise kernel (the loop covers whatever the cap leaves)."""
    return max(1, min((n + threads - 1) // threads, sm_count() * 32))


# --- RMSNorm and residual + RMSNorm ---


def _rms_forward(x, residual, w, eps):
    """(out, rstd, residual + x or None) of x (contiguous) [plus residual]; w fp32 or None."""
    C = x.shape[-1]
    N = x.numel() // C
    out = torch.empty_like(x)
    rstd = torch.empty(N, dtype=torch.float32, device=x.device)
    res_out = torch.empty_like(x) if residual is not None else None
    vec = C % _VEC[x.dtype] == 0 and aligned(x, residual, w, out, res_out)
    if N:
        launch("rmsnorm", _name("rmsnorm_forward", x.dtype, vec), (N + _ROWS_PER_BLOCK - 1) // _ROWS_PER_BLOCK,
               32 * _ROWS_PER_BLOCK, out, rstd, res_out, x, residual, w, N, C, eps)
    return out, rstd, res_out


def _rms_backward(dy, dres, inp, rstd, w, want_dw: bool):
    """(dx, dw fp32 or None): dx = RMSNorm'(dy) [+ dres]."""
    C = inp.shape[-1]
    N = inp.numel() // C
    dy = dy.contiguous()
    dres = None if dres is None else dres.contiguous()
    dx = torch.empty_like(inp)
    want_dw = want_dw and w is not None
    warps = max(1, min(4, (96 * 1024) // (4 * C))) if want_dw else 4  # dw's shared memory: warps * C floats
    grid = max(1, min((N + warps - 1) // warps, sm_count() * 8))
    partials = torch.empty(grid, C, dtype=torch.float32, device=inp.device) if want_dw else None
    vec = C % _VEC[inp.dtype] == 0 and aligned(dx, dy, dres, inp, w)
    if N:
        launch("rmsnorm", _name("rmsnorm_backward", inp.dtype, vec), grid, 32 * warps, dx, partials, dy, dres, inp,
               rstd, w, N, C, shared_mem=warps * C * 4 if want_dw else 0)
    elif want_dw:
        partials.zero_()
    return dx, (partials.sum(0) if want_dw else None)


def _gain(w):
    return None if w is None else w.detach().float().contiguous()


class RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, eps):
        x = x.contiguous()
        w32 = _gain(w)
        out, rstd, _ = _rms_forward(x, None, w32, eps)
        ctx.save_for_backward(x, rstd, w32)
        ctx.w_dtype = None if w is None else w.dtype
        return out

    @staticmethod
    def backward(ctx, dy):
        x, rstd, w32 = ctx.saved_tensors
        dx, dw = _rms_backward(dy, None, x, rstd, w32, ctx.needs_input_grad[1])
        return dx, (None if dw is None else dw.to(ctx.w_dtype)), None


class ResidualRMSNorm(torch.autograd.Function):
    """(residual + x, RMSNorm(residual + x)); the sum is rounded to the inputs' dtype before it is normed."""

    @staticmethod
    def forward(ctx, residual, x, w, eps):
        w32 = _gain(w)
        out, rstd, res_out = _rms_forward(x.contiguous(), residual.contiguous(), w32, eps)
        ctx.save_for_backward(res_out, rstd, w32)
        ctx.w_dtype = None if w is None else w.dtype
        return res_out, out

    @staticmethod
    def backward(ctx, dres, dy):
        res_out, rstd, w32 = ctx.saved_tensors
        dx, dw = _rms_backward(dy, dres, res_out, rstd, w32, ctx.needs_input_grad[2])
        return dx, dx, (None if dw is None else dw.to(ctx.w_dtype)), None


def _rms_kernels(x, w) -> bool:
    return _use_kernels(x, also=(w,)) and 0 < x.shape[-1] <= RMS_MAX_C


def rmsnorm(x: torch.Tensor, w: torch.Tensor | None, eps: float = RMS_EPS) -> torch.Tensor:
    if _rms_kernels(x, w):
        return RMSNorm.apply(x, w, eps)
    return reference.rmsnorm(x, w, eps)


def residual_rmsnorm(residual: torch.Tensor, x: torch.Tensor, w: torch.Tensor | None, eps: float = RMS_EPS):
    """(residual + x, RMSNorm(residual + x))."""
    if _rms_kernels(x, w) and _use_kernels(residual, x) and residual.shape == x.shape:
        return ResidualRMSNorm.apply(residual, x, w, eps)
    return reference.residual_rmsnorm(residual, x, w, eps)


# --- QK-norm + RoPE on the packed projections ---


def _rope_tables(cos, sin, T: int):
    """The first T rows of the tables as contiguous fp32 (a model cast to bf16 may hold bf16 tables)."""
    return cos[:T].float().contiguous(), sin[:T].float().contiguous()


def _rope_lanes(D: int, dtype: torch.dtype, *tensors) -> int:
    """Lanes a row for rope.cu's 16-byte entries (the largest power of two <= 32 and <= the row's accesses per
    half), or 0 where they do not apply (half a row not a whole number of accesses, a tensor unaligned)."""
    per_half, rem = divmod(D // 2, _VEC[dtype])
    if rem or not per_half or not aligned(*tensors):
        return 0
    return 1 << (min(per_half, 32).bit_length() - 1)


class QkvRope(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, n_head, n_kv_head, cos, sin, qk_norm, eps):
        qkv = qkv.contiguous()
        B, T, width = qkv.shape
        H, G = n_head, n_kv_head
        D = width // (H + 2 * G)
        c, s = _rope_tables(cos, sin, T)
        q = torch.empty(B, H, T, D, dtype=qkv.dtype, device=qkv.device)
        k = torch.empty(B, G, T, D, dtype=qkv.dtype, device=qkv.device)
        v = torch.empty(B, G, T, D, dtype=qkv.dtype, device=qkv.device)
        rstd = torch.empty(B, T, H + G, dtype=torch.float32, device=qkv.device) if qk_norm else None
        rows = B * T * (H + 2 * G)
        lanes = _rope_lanes(D, qkv.dtype, qkv, q, k, v, c, s)
        if rows and lanes:
            launch("rope", _name("qkv_rope_forward", qkv.dtype, vec=True), (rows * lanes + 255) // 256, 256,
                   q, k, v, rstd, qkv, c, s, B, T, H, G, D, int(qk_norm), eps, lanes)
        elif rows:
            launch("rope", _name("qkv_rope_forward", qkv.dtype), (rows + _ROWS_PER_BLOCK - 1) // _ROWS_PER_BLOCK,
                   32 * _ROWS_PER_BLOCK, q, k, v, rstd, qkv, c, s, B, T, H, G, D, int(qk_norm), eps)
        # QK-norm's backward recovers the normed q and k from these outputs, which SDPA keeps anyway
        ctx.save_for_backward(c, s, rstd, q if qk_norm else None, k if qk_norm else None)
        ctx.shape = (B, T, H, G, D, qkv.dtype)
        ctx.qk_norm = qk_norm
        return q, k, v

    @staticmethod
    def backward(ctx, dq, dk, dv):
        c, s, rstd, q, k = ctx.saved_tensors
        B, T, H, G, D, dtype = ctx.shape
        dqkv = torch.empty(B, T, (H + 2 * G) * D, dtype=dtype, device=c.device)
        rows = B * T * (H + 2 * G)
        dq, dk, dv = dq.contiguous(), dk.contiguous(), dv.contiguous()
        lanes = _rope_lanes(D, dtype, dqkv, dq, dk, dv, q, k, c, s)
        if rows and lanes:
            launch("rope", _name("qkv_rope_backward", dtype, vec=True), (rows * lanes + 255) // 256, 256,
                   dqkv, dq, dk, dv, q, k, rstd, c, s, B, T, H, G, D, int(ctx.qk_norm), lanes)
        elif rows:
            launch("rope", _name("qkv_rope_backward", dtype), (rows + _ROWS_PER_BLOCK - 1) // _ROWS_PER_BLOCK,
                   32 * _ROWS_PER_BLOCK, dqkv, dq, dk, dv, q, k, rstd, c, s, B, T, H, G, D, int(ctx.qk_norm))
        return dqkv, None, None, None, None, None, None


def qkv_rope(qkv: torch.Tensor, n_head: int, n_kv_head: int, cos: torch.Tensor, sin: torch.Tensor,
             qk_norm: bool, eps: float = RMS_EPS):
    """Packed qkv [B, T, (H + 2G) D] -> q [B, H, T, D], k, v [B, G, T, D]: QK-norm (optional) and RoPE."""
    D = qkv.shape[-1] // (n_head + 2 * n_kv_head)
    if (_use_kernels(qkv, also=(cos, sin)) and qkv.dim() == 3 and D % 2 == 0
            and D * (n_head + 2 * n_kv_head) == qkv.shape[-1] and cos.dim() == 2 and cos.shape[-1] == D // 2
            and sin.shape == cos.shape and qkv.shape[1] <= cos.shape[0]):
        return QkvRope.apply(qkv, n_head, n_kv_head, cos, sin, bool(qk_norm), eps)
    return reference.qkv_rope(qkv, n_head, n_kv_head, cos, sin, qk_norm, eps)


# --- MLP activations ---


def _activation(kernel: str, count: int, n_vec: int, dtype, *tensors) -> None:
    """Launch an elementwise kernel of activation.cu over `count` elements (`n_vec`: the length whose
    multiple of the vector width allows the 16-byte entry); tensors: its pointer arguments, then the sizes."""
    ptrs = [t for t in tensors if isinstance(t, torch.Tensor)]
    vec = n_vec % _VEC[dtype] == 0 and aligned(*ptrs)
    if count:
        launch("activation", _name(kernel, dtype, vec), _grid(count // (_VEC[dtype] if vec else 1)), 256, *tensors)


class SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h):
        h = h.contiguous()
        F = h.shape[-1] // 2
        N = h.numel() // (2 * F) if F else 0
        out = torch.empty(*h.shape[:-1], F, dtype=h.dtype, device=h.device)
        _activation("swiglu_forward", N * F, F, h.dtype, out, h, N, F)
        ctx.save_for_backward(h)
        return out

    @staticmethod
    def backward(ctx, dout):
        (h,) = ctx.saved_tensors
        F = h.shape[-1] // 2
        N = h.numel() // (2 * F) if F else 0
        dh = torch.empty_like(h)
        _activation("swiglu_backward", N * F, F, h.dtype, dh, dout.contiguous(), h, N, F)
        return dh


class ReLU2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h):
        h = h.contiguous()
        out = torch.empty_like(h)
        _activation("relu2_forward", h.numel(), h.numel(), h.dtype, out, h, h.numel())
        ctx.save_for_backward(h)
        return out

    @staticmethod
    def backward(ctx, dout):
        (h,) = ctx.saved_tensors
        return _relu2_backward(dout, h)


def _relu2_backward(dout: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    h = h.contiguous()
    dh = torch.empty_like(h)
    _activation("relu2_backward", h.numel(), h.numel(), h.dtype, dh, dout.contiguous(), h, h.numel())
    return dh


def relu2_backward(dout: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """d h of relu(h)^2 given d out, without autograd (the fused ReLU^2 GEMMs' fallback, ops/relu2_gemm.py)."""
    return _relu2_backward(dout, h) if _use_kernels(h, dout) else reference.relu2_backward(dout, h)


def swiglu(h: torch.Tensor) -> torch.Tensor:
    if _use_kernels(h) and h.shape[-1] % 2 == 0:
        return SwiGLU.apply(h)
    return reference.swiglu(h)


def relu2(h: torch.Tensor) -> torch.Tensor:
    return ReLU2.apply(h) if _use_kernels(h) else reference.relu2(h)
