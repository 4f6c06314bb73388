"""The fp8 casts (kernels/fp8.cu) and the kernels that write an fp8 copy beside their bf16 output
(LayerNorm forward, bias+GELU forward and backward), against torch's float8 conversion. Scales are powers of
two taken from an amax (delayed scaling for activations and gradients, current scaling for weights), so a
cast with the scale the kernel chose must equal torch's round-to-nearest, saturated conversion bit for bit.

    python dev/kernels/fp8.py            # needs an sm_89+ GPU (H100)
"""

from __future__ import annotations

import sys

import common
import torch

from gpt2pipe.ops import layernorm as LN
from gpt2pipe.ops import mlp as M
from gpt2pipe.ops.fp8 import E4M3, E5M2, Fp8State, Slot, has_fp8_gemms

FORMAT_MAX = {E4M3: 448.0, E5M2: 57344.0}


def torch_cast(x: torch.Tensor, dtype, scale: float) -> torch.Tensor:
    limit = FORMAT_MAX[dtype]
    return (x.float() * scale).clamp(-limit, limit).to(dtype)


def check_scale(label: str, inv_scale: float, amax: float, dtype) -> None:
    """1/scale is a power of two and the scale maps amax into (1/4, 1/2] of the format's range."""
    scale = 1.0 / inv_scale
    power = float(torch.log2(torch.tensor(inv_scale)).round())
    in_range = FORMAT_MAX[dtype] / 4 < amax * scale <= FORMAT_MAX[dtype] / 2 * (1 + 1e-6)
    ok = inv_scale == 2.0 ** power and in_range
    print(f"  {'ok  ' if ok else 'FAIL'} {label}: 1/scale 2^{power:.0f}, amax*scale {amax * scale:.1f}")
    if not ok:
        common.FAILURES.append(label)


def validate(N: int, C: int) -> None:
    torch.manual_seed(0)
    state = Fp8State(1, torch.device("cuda"))
    x = torch.randn(N, C, **common.BF16) * 3
    amax = x.abs().max().float()
    print(f"N={N} C={C}")
    for dtype, slot in ((E4M3, Slot.MLP_INPUT), (E5M2, Slot.MLP_OUTPUT_GRAD)):
        target = state.target(0, slot)
        state.amax_previous[0, slot] = amax
        got = target.cast(x, dtype)
        inv = target.inv_scale.item()
        check_scale(f"cast {dtype} scale", inv, amax.item(), dtype)
        common.check_equal(f"cast {dtype} = torch's conversion", got.view(torch.uint8),
                           torch_cast(x, dtype, 1.0 / inv).view(torch.uint8))
        common.check_equal(f"cast {dtype} records amax", target.amax_current, amax)
    measured = torch.zeros((), device="cuda")
    state.target(0, Slot.GELU_OUTPUT).record_amax(x)
    measured.copy_(state.amax_current[0, Slot.GELU_OUTPUT])
    common.check_equal("amax", measured, amax)
    big = torch.full((N, C), 1e4, **common.BF16)
    state.amax_previous[0, Slot.QKV_INPUT] = 1.0  # the tensor grew past its delayed scale: saturate, no NaN
    saturated = state.target(0, Slot.QKV_INPUT).cast(big, E4M3).float()
    common.check_equal("saturates at the format's max", saturated, torch.full_like(saturated, 448.0))

    w = torch.randn(C, N, **common.BF16) * 0.02  # weights: odd tiles in both directions
    weight = state.target(0, Slot.FC_WEIGHT)
    w8, w8t = weight.weight_copies(w)
    inv = weight.inv_scale.item()
    check_scale("weight scale (its own amax)", inv, w.abs().max().item(), E4M3)
    common.check_equal("weight e4m3 = torch's conversion", w8.view(torch.uint8), torch_cast(w, E4M3, 1 / inv).view(torch.uint8))
    common.check_equal("weight transpose", w8t.view(torch.uint8), w8.t().contiguous().view(torch.uint8))

    if C % 16 == 0 and N % 16 == 0:  # the fused fp8 outputs exist only in the vectorised kernels
        residual, w_ln, b_ln = torch.randn(N, C, **common.BF16), torch.randn(C, **common.BF16), torch.randn(C, **common.BF16)
        target = state.target(0, Slot.QKV_INPUT)
        state.amax_previous[0, Slot.QKV_INPUT] = 4.0
        state.amax_current.zero_()
        _, out, out8 = LN.residual_layernorm(residual, x, w_ln, b_ln, target)
        common.check("layernorm fp8 copy", out8.float() * target.inv_scale.item(), out.float(), 5e-2)
        common.check("layernorm records amax", target.amax_current, out.float().abs().max(), 1e-2)
        bias = torch.randn(C, **common.BF16)
        gelu = state.target(0, Slot.GELU_OUTPUT)
        state.amax_previous[0, Slot.GELU_OUTPUT] = 8.0
        g, g8 = M.bias_gelu_forward(x, bias, gelu)
        common.check("bias+gelu fp8 copy", g8.float() * gelu.inv_scale.item(), g.float(), 5e-2)
        for gradients in ("e5m2", "e4m3"):  # train.fp8_gradients
            grad = Fp8State(1, torch.device("cuda"), gradients).target(0, Slot.PRE_GELU_GRAD)
            grad.state.amax_previous[0, Slot.PRE_GELU_GRAD] = 16.0
            dh, _, dh8 = M.bias_gelu_backward(torch.randn(N, C, **common.BF16), x, bias, grad)
            common.check_equal(f"bias+gelu bwd {gradients} copy = torch's conversion of dh", dh8.view(torch.uint8),
                               torch_cast(dh, grad.dtype, 1 / grad.inv_scale.item()).view(torch.uint8))


def benchmark(N: int = 65536, C: int = 768) -> None:
    state = Fp8State(1, torch.device("cuda"))
    state.amax_previous.fill_(4.0)
    h = torch.randn(N, 4 * C, **common.BF16)
    target = state.target(0, Slot.GELU_OUTPUT)
    n = h.numel()
    common.print_table(f"cast bf16 -> e4m3, {N}x{4 * C}", [
        ("ours (scale from the previous amax, amax recorded)", common.time_us(lambda: target.cast(h, E4M3)), 3 * n),
        ("ours amax only", common.time_us(lambda: target.record_amax(h)), 2 * n),
        ("torch (x * s).clamp().to(e4m3)", common.time_us(lambda: torch_cast(h, E4M3, 2.0 ** -6)), 3 * n),
        ("torch x.abs().amax()", common.time_us(lambda: h.abs().amax()), 2 * n)])
    w = torch.randn(4 * C, C, **common.BF16) * 0.02
    weight = state.target(0, Slot.FC_WEIGHT)
    common.print_table(f"weight copies W and W^T, {4 * C}x{C}", [
        ("ours (amax + tiled transpose)", common.time_us(lambda: weight.weight_copies(w)), 2 * w.numel() + 2 * w.numel()),
        ("torch", common.time_us(lambda: (lambda w8: (w8, w8.t().contiguous()))(torch_cast(w, E4M3, 2.0 ** 9))),
         2 * w.numel() + 2 * w.numel())])
    bias = torch.randn(4 * C, **common.BF16)
    common.print_table(f"bias+gelu forward with and without the fp8 copy, {N}x{4 * C}", [
        ("bf16 only (vec)", common.time_us(lambda: M.bias_gelu_forward(h, bias)), 4 * n),
        ("bf16 + e4m3 copy (fp8)", common.time_us(lambda: M.bias_gelu_forward(h, bias, target)), 5 * n)])
    x, r = torch.randn(N, C, **common.BF16), torch.randn(N, C, **common.BF16)
    w_ln, b_ln = torch.randn(C, **common.BF16), torch.randn(C, **common.BF16)
    ln = state.target(0, Slot.MLP_INPUT)
    common.print_table(f"residual+layernorm forward with and without the fp8 copy, {N}x{C}", [
        ("bf16 only (vec)", common.time_us(lambda: LN.residual_layernorm(r, x, w_ln, b_ln)), 8 * N * C),
        ("bf16 + e4m3 copy", common.time_us(lambda: LN.residual_layernorm(r, x, w_ln, b_ln, ln)), 9 * N * C)])


if __name__ == "__main__":
    common.require_gpu()
    if not has_fp8_gemms():
        print("fp8 needs an sm_89+ GPU", file=sys.stderr)
        sys.exit(2)
    for shape in [(16, 16), (8, 24), (1000, 776), (4096, 768), (48, 3072)]:
        validate(*shape)
    benchmark()
    common.finish()
