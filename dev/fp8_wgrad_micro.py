"""Would fp8 weight-gradient GEMMs pay at GPT-2 shapes? Times, per 65,536-token micro-batch on one GPU, each
weight-gradient GEMM of a block (dW = dYᵀ X) three ways:

  bf16       what the step runs: torch.mm on the bf16 tensors as they lie ([N, out] and [N, in])
  fp8 GEMM   torch._scaled_mm(e5m2 dYᵀ, e4m3 X) with both operands already cast and transposed (fp8 needs
             the token dimension contiguous in both, so neither can be read where it lies)
  + casts    the fp8 GEMM plus the cheapest pass that could make its operands: one elementwise bf16 -> fp8
             cast of dY and of X (a transposing cast moves the same bytes and cannot be faster; the real
             one also needs each tensor's amax first)

and, as what torch offers today, the two-pass `t().contiguous().to(fp8)` of both. The third column is a lower
bound on what an fp8 weight gradient costs without fusing its casts into the kernels that produce dY and X;
fused, only the fp8 writes (printed as "writes") would remain.

Usage (repo root, on an H100/H200): python dev/fp8_wgrad_micro.py [--tokens 65536] [--C 768,1024,1280]
"""

from __future__ import annotations

import argparse

import torch

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2


def timed(fn) -> float:  # µs
    from gpt2pipe.bench.timing import time_us

    return time_us(fn, reps=30)


def wgrad_rows(N: int, C: int) -> list[tuple[str, float, float, float, float, float]]:
    bf = dict(device="cuda", dtype=torch.bfloat16)
    one = torch.ones((), device="cuda", dtype=torch.float32)
    rows = []
    for name, n_out, n_in in (("qkv", 3 * C, C), ("attn proj", C, C), ("fc", 4 * C, C), ("mlp proj", C, 4 * C)):
        dy, x = torch.randn(N, n_out, **bf), torch.randn(N, n_in, **bf)
        dyT, xT = dy.t().contiguous().to(E5M2), x.t().contiguous().to(E4M3)  # [out, N], [in, N]
        bf16 = timed(lambda: torch.mm(dy.t(), x))
        fp8 = timed(lambda: torch._scaled_mm(dyT, xT.t(), one, one, out_dtype=torch.bfloat16))
        casts = timed(lambda: (dy.to(E5M2), x.to(E4M3)))
        torch_casts = timed(lambda: (dy.t().contiguous().to(E5M2), x.t().contiguous().to(E4M3)))
        writes = timed(lambda: (dyT.fill_(0), xT.fill_(0)))  # writing the two fp8 copies, nothing read
        rows.append((name, bf16, fp8, fp8 + casts, fp8 + torch_casts, fp8 + writes))
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=65536)
    p.add_argument("--C", default="768,1024,1280", help="model widths (124M, 350M, 774M)")
    a = p.parse_args()
    torch.manual_seed(0)
    print(f"{torch.cuda.get_device_name()}, {a.tokens} tokens per micro-batch, µs per weight gradient\n")
    print("| C | GEMM | bf16 | fp8 GEMM | fp8 + one-pass casts | fp8 + torch casts | fp8 + writes only |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for C in (int(c) for c in a.C.split(",")):
        total = [0.0] * 5
        for name, *t in wgrad_rows(a.tokens, C):
            total = [s + v for s, v in zip(total, t)]
            print(f"| {C} | {name} | " + " | ".join(f"{v:.1f}" for v in t) + " |")
        print(f"| {C} | **block** | " + " | ".join(f"**{v:.1f}**" for v in total) + " |")


if __name__ == "__main__":
    main()
