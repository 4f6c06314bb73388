"""fp8 scaling granularity at GPT-2 124M's GEMM shapes (issue 24 item 4): per tensor (what train.fp8 uses),
per row (token / output channel), and DeepSeek-V3's blocks (1x128 for activations and gradients, 128x128 for
weights), through torch's scaled GEMM (cuBLASLt; blocks need CUDA 12.9+ and sm_90). For each of the three
GEMMs of a linear layer — forward, input gradient, weight gradient — the error against an fp32 product and
the GEMM's time next to bf16's. Operands are quantised here with plain torch ops (not timed): this measures
what each granularity buys in error and costs in the GEMM, not the casts (those would be fused into the
kernels that produce the operands).

The data have what makes per-tensor scaling lose precision: activations with a few outlier channels (as
GPT-2's residual stream has), gradients whose size varies by orders of magnitude between tokens.

    python dev/kernels/fp8_scaling.py [--tokens 65536]
"""

from __future__ import annotations

import argparse
import sys

import torch

from common import check, finish, rel_error, require_gpu, time_us

from gpt2pipe.ops.fp8 import has_fp8_gemms

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
FP8_MAX = {E4M3: 448.0, E5M2: 57344.0}


def quantise(t: torch.Tensor, dtype, rows: int, cols: int):
    """t (R, C) in fp8 with one scale per rows x cols block (0 = the whole extent): (t8, dequant scales)."""
    R, C = t.shape
    rows, cols = rows or R, cols or C
    blocks = t.float().view(R // rows, rows, C // cols, cols)
    scale = (blocks.abs().amax(dim=(1, 3), keepdim=True) / FP8_MAX[dtype]).clamp_min(1e-30)
    t8 = (blocks / scale).to(dtype).view(R, C)
    return t8, scale.view(R // rows, C // cols)


def scaled_mm(a, b, granularity: str, dtype_a=E4M3, dtype_b=E4M3):
    """a (M, K) @ b (N, K)^T in bf16 from fp8 operands scaled per `granularity` (per tensor: dtype_a/dtype_b,
    e5m2 for gradients as train.fp8 does; finer: e4m3 throughout)."""
    if granularity.startswith("tensor"):  # "tensor": train.fp8's types; "tensor, e4m3": e4m3 throughout
        e4m3 = granularity.endswith("e4m3")
        a8, sa = quantise(a, E4M3 if e4m3 else dtype_a, 0, 0)
        b8, sb = quantise(b, E4M3 if e4m3 else dtype_b, 0, 0)
        return lambda: torch._scaled_mm(a8, b8.t(), scale_a=sa.view(()), scale_b=sb.view(()), out_dtype=torch.bfloat16)
    if granularity == "row":  # finer scales: e4m3 (more mantissa) for gradients too, as DeepSeek-V3 does
        a8, sa = quantise(a, E4M3, 1, 0)
        b8, sb = quantise(b, E4M3, 1, 0)
        return lambda: torch._scaled_mm(a8, b8.t(), scale_a=sa, scale_b=sb.t(), out_dtype=torch.bfloat16)
    from torch.nn.functional import ScalingType, scaled_mm as f_scaled_mm  # torch 2.10+

    def recipe(size: str):  # the enum's spelling differs between torch versions
        for name in (f"Blockwise{size}", f"BlockWise{size}", f"Blockwise_{size}"):
            if hasattr(ScalingType, name):
                return getattr(ScalingType, name)
        raise AttributeError(f"no {size} block scaling in {sorted(ScalingType.__members__)}")

    a8, sa = quantise(a, E4M3, 1, 128)  # cuBLAS's blocks take e4m3 on both sides
    sa = sa.t().contiguous().t()  # outer-dim-major, as cuBLAS reads 1x128 scales
    if granularity == "1x128 x 128x128":
        b8, sb = quantise(b, E4M3, 128, 128)
        pad = -sb.shape[1] % 4  # 128x128 scales: K/128 padded to a multiple of 4, then transposed
        sb = torch.nn.functional.pad(sb, (0, pad), value=1.0).t()
        recipe_b = recipe("128x128")
    else:  # 1x128 x 1x128 (the weight gradient: both operands are activations or gradients)
        b8, sb = quantise(b, E4M3, 1, 128)
        sb = sb.t().contiguous().t()
        recipe_b = recipe("1x128")
    return lambda: f_scaled_mm(a8, b8.t(), sa, recipe("1x128"), sb, recipe_b,
                               output_dtype=torch.bfloat16)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=65536)
    a = p.parse_args()
    require_gpu()
    if not has_fp8_gemms():
        print("fp8 GEMMs need sm_89 or newer", file=sys.stderr)
        sys.exit(2)
    torch.manual_seed(0)
    M = a.tokens
    gen = dict(device="cuda", dtype=torch.float32)

    def activations(n, c):  # a few channels 30x the rest, as GPT-2's residual stream has
        x = torch.randn(n, c, **gen)
        x[:, torch.randperm(c, device="cuda")[:4]] *= 30
        return x.bfloat16()

    def gradients(n, c):  # token-to-token size spread over ~3 orders of magnitude
        return (torch.randn(n, c, **gen) * torch.exp(2 * torch.randn(n, 1, **gen)) * 1e-4).bfloat16()

    w_fc = (0.02 * torch.randn(3072, 768, **gen)).bfloat16()
    x, dpre, dy = activations(M, 768), gradients(M, 3072), gradients(M, 768)
    w_proj = (0.02 * torch.randn(768, 3072, **gen)).bfloat16()
    # (name, A (M x K), B (N x K), fp8 type of A): out = A @ B^T; the weight gradient takes both transposed
    cases = [("fc forward: x W^T", x, w_fc, E4M3),
             ("proj input gradient: dy W", dy, w_proj.t().contiguous(), E5M2),
             ("fc weight gradient: dpre^T x", dpre.t().contiguous(), x.t().contiguous(), E5M2)]
    rows = []
    for name, A, B, dtype_a in cases:
        print(f"\n{name}: {A.shape[0]} x {B.shape[0]} x {A.shape[1]}")
        ref = A.double() @ B.double().t()
        bf16 = lambda: A @ B.t()  # noqa: E731
        check(f"{name}, bf16", bf16(), ref, 1e-2)
        rows.append((name, "bf16", time_us(bf16), rel_error(bf16(), ref)))
        weight_grad = "weight" in name
        granularities = ["tensor", "row", "1x128 x 1x128" if weight_grad else "1x128 x 128x128"]
        if dtype_a != E4M3:  # a gradient operand: per tensor in e4m3 too, to split format from scale size
            granularities.insert(1, "tensor, e4m3")
        for granularity in granularities:
            try:
                fn = scaled_mm(A, B, granularity, dtype_a, E4M3)  # B: weights, or activations (weight gradient)
                out = fn()
            except (RuntimeError, ImportError, AttributeError) as e:  # a granularity this torch/cuBLAS lacks
                print(f"  {granularity}: not available ({str(e).splitlines()[0][:120]})")
                continue
            check(f"{name}, fp8 per {granularity}", out, ref, 0.25)  # loose: catches a wrong layout (error ~1)
            rows.append((name, f"fp8 per {granularity}", time_us(fn), rel_error(out, ref)))
    print("\n| GEMM | operands | rel. error vs fp64 | µs | vs bf16 |\n|---|---|---:|---:|---:|")
    base = {}
    for name, version, us, err in rows:
        base.setdefault(name, us)
        print(f"| {name} | {version} | {err:.2e} | {us:.1f} | {base[name] / us:.2f}x |")
    finish()


if __name__ == "__main__":
    main()
