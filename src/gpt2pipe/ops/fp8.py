"""FP8 matmuls for the MLP (H100 and later): its two GEMMs forward and their input-gradient GEMMs run as
`torch._scaled_mm` on fp8 operands, about 1.4-1.8x the bf16 rate on the H100 at GPT-2 shapes. Weight
gradients stay bf16 (they would need transposed fp8 copies of the activations).

Scaling is per tensor with power-of-two scales (see kernels/fp8.cuh). Activations (e4m3) and gradients
(e5m2) use delayed scaling: the amax each slot had at the previous micro-step sets this one's scale, and
the producing kernel records the new amax as it writes, so there is no extra pass and no host sync. The
fp8 copies come out of our kernels (LayerNorm forward and bias+GELU forward and backward write them beside
their bf16 outputs); only the gradient coming into the MLP gets a separate cast. The attention's qkv GEMM
runs its forward in fp8 too (its input comes from a LayerNorm); its backward, the attention and its
output projection, and the classifier stay bf16. A slot with no amax yet (the first micro-step, or the
first backward) runs in bf16 and only measures.
"""

from __future__ import annotations

import torch

from gpt2pipe.ops.cuda import aligned, launch, sm_count
from gpt2pipe.ops.autograd import bias_gelu_backward, bias_gelu_forward, bias_grad, linear_backward

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
# per layer: MLP input, GELU output, gradient of the MLP output, gradient of the pre-GELU, attention input;
# the fc, proj and qkv weights
H, G, DY, DPRE, X_QKV, W_FC, W_PROJ, W_QKV = range(8)
SLOTS = 8


class Fp8State:
    """amax per (layer, slot): `prev` sets this micro-step's scales, `cur` collects this micro-step's amax;
    `inv` holds each slot's 1/scale for the GEMMs. `ready` says, per direction, whether prev holds amax."""

    def __init__(self, n_layer: int, device: torch.device):
        self.prev = torch.zeros(n_layer, SLOTS, device=device)
        self.cur = torch.zeros(n_layer, SLOTS, device=device)
        # cuBLASLt wants each scale 16-byte aligned: one scale per 4 floats
        self._inv = torch.ones(n_layer, SLOTS, 4, device=device)
        self.inv = self._inv[..., 0]
        self.seen = {"fwd": False, "bwd": False}  # an amax was recorded since the last roll
        self.ready = {"fwd": False, "bwd": False}

    def roll(self) -> None:
        """Start a micro-step: the last micro-step's amax become the scales (slots it did not touch keep theirs)."""
        torch.where(self.cur > 0, self.cur, self.prev, out=self.prev)
        self.cur.zero_()
        for k in self.seen:
            self.ready[k] |= self.seen[k]
            self.seen[k] = False


def _slot(state: Fp8State, layer: int, slot: int):
    return state.cur[layer, slot], state.prev[layer, slot], state.inv[layer, slot]


def _grid(n8: int) -> int:
    return max(1, min((n8 + 255) // 256, sm_count() * 8))


def _amax(x: torch.Tensor, out: torch.Tensor) -> None:
    launch("fp8", "amax_bf16", _grid(x.numel() // 8), 256, out, x, x.numel() // 8)


def cast(x: torch.Tensor, dtype, state: Fp8State, layer: int, slot: int) -> torch.Tensor:
    cur, prev, inv = _slot(state, layer, slot)
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    kernel = "cast_e4m3" if dtype == E4M3 else "cast_e5m2"
    launch("fp8", kernel, _grid(x.numel() // 8), 256, out, inv, cur, x, prev, x.numel() // 8)
    return out


def _weight(w: torch.Tensor, state: Fp8State, layer: int, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(w8, w8t): e4m3 copies of W and W^T, scaled by this weight's own amax (current scaling)."""
    cur, _, inv = _slot(state, layer, slot)
    cur.zero_()
    _amax(w, cur)
    rows, cols = w.shape
    w8 = torch.empty(rows, cols, dtype=E4M3, device=w.device)
    w8t = torch.empty(cols, rows, dtype=E4M3, device=w.device)
    launch("fp8", "weight_fp8", ((cols + 31) // 32, (rows + 31) // 32), (32, 8), w8, w8t, inv, w, cur, rows, cols)
    return w8, w8t


def _mm(a8: torch.Tensor, b8: torch.Tensor, scale_a, scale_b, bias=None) -> torch.Tensor:
    return torch._scaled_mm(a8, b8, scale_a=scale_a, scale_b=scale_b, bias=bias, out_dtype=torch.bfloat16)


class Fp8Linear(torch.autograd.Function):
    """y = x @ W.T + b with the forward GEMM in fp8 from x8, the e4m3 copy x's producer wrote; bf16 backward."""

    @staticmethod
    def forward(ctx, x, x8, w, b, state: Fp8State, layer: int):
        ctx.save_for_backward(x, w)
        C = x.shape[-1]
        if not state.ready["fwd"]:
            return torch.nn.functional.linear(x, w, b)
        w8, _ = _weight(w, state, layer, W_QKV)
        y = _mm(x8.view(-1, C), w8.t(), state.inv[layer, X_QKV], state.inv[layer, W_QKV], bias=b)
        return y.view(*x.shape[:-1], w.shape[0])

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        dx, dw, db = linear_backward(dy, x, w)
        return dx, None, dw, db, None, None


class Fp8Mlp(torch.autograd.Function):
    """y = proj(gelu(fc(h))) with the fc and proj GEMMs (forward and input gradients) in fp8. h8, the
    e4m3 copy of h from the LayerNorm that made it, saves a cast (None: cast here)."""

    @staticmethod
    def forward(ctx, h, h8, w_fc, b_fc, w_proj, b_proj, state: Fp8State, layer: int):
        C = h.shape[-1]
        h2 = h.contiguous().view(-1, C)
        M, F = h2.shape[0], w_fc.shape[0]
        fp8 = state.ready["fwd"]
        state.seen["fwd"] = True
        cur_g, prev_g, inv_g = _slot(state, layer, G)
        if fp8:
            h8 = cast(h2, E4M3, state, layer, H) if h8 is None else h8.view(-1, C)
            wfc8, wfc8t = _weight(w_fc, state, layer, W_FC)
            wpr8, wpr8t = _weight(w_proj, state, layer, W_PROJ)
            pre = _mm(h8, wfc8.t(), state.inv[layer, H], state.inv[layer, W_FC])
        else:  # calibration: bf16, measuring the amax the next micro-step scales by
            _amax(h2, state.cur[layer, H])
            wfc8t = wpr8t = None
            pre = h2 @ w_fc.t()
        if fp8:
            g8 = torch.empty(M, F, dtype=E4M3, device=h.device)
            g = bias_gelu_forward(pre, b_fc, (g8, inv_g, cur_g, prev_g))
            y = _mm(g8, wpr8.t(), inv_g, state.inv[layer, W_PROJ], bias=b_proj)
        else:
            g = bias_gelu_forward(pre, b_fc)
            _amax(g, cur_g)
            y = torch.addmm(b_proj, g, w_proj.t())
        ctx.save_for_backward(h2, pre, g, w_fc, b_fc, w_proj, wfc8t, wpr8t)
        ctx.state, ctx.layer, ctx.fp8, ctx.shape = state, layer, fp8 and state.ready["bwd"], h.shape
        return y.view(*h.shape[:-1], w_proj.shape[0])

    @staticmethod
    def backward(ctx, dy):
        h2, pre, g, w_fc, b_fc, w_proj, wfc8t, wpr8t = ctx.saved_tensors
        state, layer, fp8 = ctx.state, ctx.layer, ctx.fp8
        state.seen["bwd"] = True
        dy2 = dy.contiguous().view(-1, dy.shape[-1])
        M, F = pre.shape
        if fp8:
            dy8 = cast(dy2, E5M2, state, layer, DY)
            dg = _mm(dy8, wpr8t.t(), state.inv[layer, DY], state.inv[layer, W_PROJ])
        else:
            _amax(dy2, state.cur[layer, DY])
            dg = dy2 @ w_proj
        dw_proj, db_proj = dy2.t() @ g, bias_grad(dy2)
        cur, prev, inv = _slot(state, layer, DPRE)
        if fp8:
            dpre8 = torch.empty(M, F, dtype=E5M2, device=pre.device)
            dpre, db_fc = bias_gelu_backward(dg, pre, b_fc, (dpre8, inv, cur, prev))
            dh = _mm(dpre8, wfc8t.t(), inv, state.inv[layer, W_FC])
        else:
            dpre, db_fc = bias_gelu_backward(dg, pre, b_fc)
            _amax(dpre, cur)
            dh = dpre @ w_fc
        dw_fc = dpre.t() @ h2
        return (dh.view(ctx.shape), None, dw_fc, db_fc, dw_proj, db_proj, None, None)


def usable(h: torch.Tensor, w_fc: torch.Tensor, w_proj: torch.Tensor, *biases: torch.Tensor) -> bool:
    """fp8 GEMMs need an sm_89+ GPU, bf16 tensors and dimensions that are multiples of 16; the fp8 kernels
    are the vectorised ones, so the parameters must also be 16-byte aligned."""
    if not (h.is_cuda and torch.cuda.get_device_capability(h.device) >= (8, 9)):
        return False
    dims = (h.shape[-1], w_fc.shape[0], h.numel() // h.shape[-1])
    return (h.dtype == w_fc.dtype == w_proj.dtype == torch.bfloat16 and all(d % 16 == 0 for d in dims)
            and aligned(w_fc, w_proj, *biases))


def state_of(model) -> dict | None:
    """The fp8 scaling state of a model (amax history, scales, calibration flags), None without fp8."""
    st = getattr(model, "_fp8_state", None)
    if st is None:
        return None
    return {"prev": st.prev.cpu(), "cur": st.cur.cpu(), "inv": st._inv.cpu(), "seen": dict(st.seen),
            "ready": dict(st.ready)}


def load_state(model, state: dict) -> None:
    st = getattr(model, "_fp8_state", None)
    if st is None:
        model._fp8_saved = state  # created lazily on the first fp8 micro-step, which takes it from here
        return
    st.prev.copy_(state["prev"]), st.cur.copy_(state["cur"]), st._inv.copy_(state["inv"])
    st.seen, st.ready = dict(state["seen"]), dict(state["ready"])
