"""The fp8 GEMMs as autograd Functions: the MLP (both GEMMs forward and their input-gradient GEMMs) and
the attention's qkv projection (forward only; its backward is ops.attention.QkvAttention's).

`torch._scaled_mm` on e4m3 activations/weights and e4m3 (or e5m2) gradients runs about 1.4-1.8x the bf16
rate on the H100 at GPT-2 shapes. Weight gradients stay bf16 (they would need transposed fp8 copies of the
activations). The fp8 copies come out of our kernels where they can: the LayerNorm forward and the
bias+GELU forward and backward write them beside their bf16 outputs; only the gradient coming into the
MLP gets a separate cast. A direction with no amax yet runs in bf16 and only measures (calibration).
"""

from __future__ import annotations

import functools

import torch

from gpt2pipe.ops.linear import weight_bias_grad
from gpt2pipe.ops.mlp import bias_gelu_backward, bias_gelu_forward
from gpt2pipe.ops.fp8.casts import E4M3, scaled_mm
from gpt2pipe.ops.fp8.state import Fp8State, Slot


def qkv_forward(x, x_fp8, weight, bias, state: Fp8State, layer: int) -> torch.Tensor:
    """x @ W.T + b with the GEMM in fp8 from x_fp8, the e4m3 copy x's LayerNorm wrote (bf16 until the forward
    direction is calibrated). No autograd: ops.attention.QkvAttention calls it and does the (bf16) backward.
    The LayerNorm that wrote x_fp8 recorded x's amax, so this micro-step counts as measured: without it a
    model whose only fp8 GEMM is qkv (fp8_gemms: [qkv]) never left calibration and ran bf16 throughout."""
    state.measured["forward"] = True
    if not state.calibrated["forward"]:
        return torch.nn.functional.linear(x, weight, bias)
    C = x.shape[-1]
    w_target = state.target(layer, Slot.QKV_WEIGHT)
    w8, _ = w_target.weight_copies(weight)
    y = scaled_mm(x_fp8.view(-1, C), w8.t(), state.target(layer, Slot.QKV_INPUT).inv_scale, w_target.inv_scale,
                  bias=bias)
    return y.view(*x.shape[:-1], weight.shape[0])


class Fp8MlpFunction(torch.autograd.Function):
    """y = proj(gelu(fc(x))) with the fc and proj GEMMs (forward and input gradients) in fp8. x_fp8, the
    e4m3 copy of x from the LayerNorm that made it, saves a cast (None: cast here)."""

    @staticmethod
    def forward(ctx, x, x_fp8, fc_weight, fc_bias, proj_weight, proj_bias, state: Fp8State, layer: int):
        C = x.shape[-1]
        x2 = x.contiguous().view(-1, C)
        fp8 = state.calibrated["forward"]
        state.measured["forward"] = True
        slot = functools.partial(state.target, layer)
        gelu_out = slot(Slot.GELU_OUTPUT)
        if fp8:
            x8 = slot(Slot.MLP_INPUT).cast(x2, E4M3) if x_fp8 is None else x_fp8.view(-1, C)
            fc8, fc8_t = slot(Slot.FC_WEIGHT).weight_copies(fc_weight)
            proj8, proj8_t = slot(Slot.PROJ_WEIGHT).weight_copies(proj_weight)
            pre = scaled_mm(x8, fc8.t(), slot(Slot.MLP_INPUT).inv_scale, slot(Slot.FC_WEIGHT).inv_scale)
            g, g8 = bias_gelu_forward(pre, fc_bias, gelu_out)
            y = scaled_mm(g8, proj8.t(), gelu_out.inv_scale, slot(Slot.PROJ_WEIGHT).inv_scale, bias=proj_bias)
        else:  # calibration: bf16, measuring the amax the next micro-step scales by
            slot(Slot.MLP_INPUT).record_amax(x2)
            fc8_t = proj8_t = None
            pre = x2 @ fc_weight.t()
            g, _ = bias_gelu_forward(pre, fc_bias)
            gelu_out.record_amax(g)
            y = torch.addmm(proj_bias, g, proj_weight.t())
        ctx.save_for_backward(x2, pre, g, fc_weight, fc_bias, proj_weight, fc8_t, proj8_t)
        ctx.state, ctx.layer, ctx.shape = state, layer, x.shape
        ctx.fp8 = fp8 and state.calibrated["backward"]
        return y.view(*x.shape[:-1], proj_weight.shape[0])

    @staticmethod
    def backward(ctx, dy):
        x2, pre, g, fc_weight, fc_bias, proj_weight, fc8_t, proj8_t = ctx.saved_tensors
        state, layer = ctx.state, ctx.layer
        state.measured["backward"] = True
        out_grad, pre_grad = state.target(layer, Slot.MLP_OUTPUT_GRAD), state.target(layer, Slot.PRE_GELU_GRAD)
        dy2 = dy.contiguous().view(-1, dy.shape[-1])
        if ctx.fp8:
            dy8 = out_grad.cast(dy2, out_grad.dtype)
            dg = scaled_mm(dy8, proj8_t.t(), out_grad.inv_scale, state.target(layer, Slot.PROJ_WEIGHT).inv_scale)
        else:
            out_grad.record_amax(dy2)
            dg = dy2 @ proj_weight
        d_proj_weight, d_proj_bias = weight_bias_grad(dy2, g)
        if ctx.fp8:
            dpre, d_fc_bias, dpre8 = bias_gelu_backward(dg, pre, fc_bias, pre_grad)
            dx = scaled_mm(dpre8, fc8_t.t(), pre_grad.inv_scale, state.target(layer, Slot.FC_WEIGHT).inv_scale)
        else:
            dpre, d_fc_bias, _ = bias_gelu_backward(dg, pre, fc_bias)
            pre_grad.record_amax(dpre)
            dx = dpre @ fc_weight
        d_fc_weight = dpre.t() @ x2
        return dx.view(ctx.shape), None, d_fc_weight, d_fc_bias, d_proj_weight, d_proj_bias, None, None
