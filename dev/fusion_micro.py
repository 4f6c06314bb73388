"""Times the alternatives for the MLP's GELU and the qkv projection's backward at GPT-2 124M's shape (one
B=64 micro-batch, 65,536 tokens), each as the median of CUDA-event timings on one GPU:

  mlp fwd:  fc GEMM + our bias+GELU kernel | cuBLASLt GELU_AUX_BIAS epilogue
  mlp bwd:  dact GEMM + our bias+GELU backward kernel | DGELU epilogue + our bias_grad | DGELU_BGRAD epilogue
  qkv bwd:  cat(dq, dk, dv) + one dW GEMM + one dx GEMM + bias_grad | three of each (no cat) | ...
  dW + db:  per linear (qkv as QkvAttention runs it: three C-wide blocks), torch's dW GEMM + our bias_grad |
            cuBLASLt's dW GEMM asked for the bias gradient in its BGRADB epilogue | cuBLASLt's dW GEMM alone

Usage (repo root, on a GPU): python dev/fusion_micro.py [--tokens 65536] [--C 768]
"""

from __future__ import annotations

import argparse

import torch


def timed(fn) -> float:  # µs
    from gpt2pipe.bench.timing import time_us

    return time_us(fn, reps=30)


def main() -> None:
    from gpt2pipe.ops.linear import bias_grad
    from gpt2pipe.ops.mlp import bias_gelu_backward, bias_gelu_forward
    from gpt2pipe.ops import cublaslt

    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=65536)
    p.add_argument("--C", type=int, default=768)
    a = p.parse_args()
    N, C, H = a.tokens, a.C, 4 * a.C
    torch.manual_seed(0)
    bf = dict(device="cuda", dtype=torch.bfloat16)
    x, dy = torch.randn(N, C, **bf), torch.randn(N, C, **bf)
    fc_w, fc_b = torch.randn(H, C, **bf) * 0.02, torch.randn(H, **bf) * 0.1
    proj_w = torch.randn(C, H, **bf) * 0.02
    pre = torch.randn(N, H, **bf)
    rows = []

    rows.append(("mlp fwd: fc GEMM + bias+GELU kernel", timed(lambda: bias_gelu_forward(x @ fc_w.t(), fc_b))))
    rows.append(("mlp fwd: GELU_AUX_BIAS epilogue", timed(lambda: cublaslt.linear_gelu(x, fc_w, fc_b))))
    zero = torch.zeros_like(fc_b)
    rows.append(("mlp bwd: dact GEMM + bias+GELU bwd kernel",
                 timed(lambda: bias_gelu_backward(dy @ proj_w, pre, zero))))

    def dgelu_then_bias():
        dpre = torch.empty(N, H, **bf)
        cublaslt._matmul(dpre, proj_w, dy, H, N, C, False, False, "dgelu", aux=pre)
        return dpre, bias_grad(dpre)

    rows.append(("mlp bwd: DGELU epilogue + bias_grad kernel", timed(dgelu_then_bias)))

    def dgelu_bgrad():
        dpre, dbias = torch.empty(N, H, **bf), torch.empty(H, **bf)
        cublaslt._matmul(dpre, proj_w, dy, H, N, C, False, False, "dgelu_bgrad", bias=dbias, aux=pre)

    rows.append(("mlp bwd: DGELU_BGRAD epilogue", timed(dgelu_bgrad)))

    w = torch.randn(3 * C, C, **bf) * 0.02
    parts = [torch.randn(N, C, **bf) for _ in range(3)]

    def packed():
        dqkv = torch.cat(parts, dim=1)
        return dqkv.t() @ x, dqkv @ w, bias_grad(dqkv)

    def three():
        dw = torch.empty_like(w)
        for g, d in zip(parts, dw.split(C)):
            torch.mm(g.t(), x, out=d)
        dx = torch.mm(parts[0], w[:C])
        for g, wp in zip(parts[1:], w.split(C)[1:]):
            dx.addmm_(g, wp)
        return dw, dx, torch.cat([bias_grad(g) for g in parts])

    def three_dx_cat_dw():  # dx without the cat, dW through it
        dqkv = torch.cat(parts, dim=1)
        dx = torch.mm(parts[0], w[:C])
        for g, wp in zip(parts[1:], w.split(C)[1:]):
            dx.addmm_(g, wp)
        return dqkv.t() @ x, dx, bias_grad(dqkv)

    rows.append(("qkv bwd: cat + dW + dx + bias_grad (packed)", timed(packed)))
    rows.append(("qkv bwd: 3 dW + 3 dx (accumulating) + 3 bias_grad", timed(three)))
    rows.append(("qkv bwd: cat + dW + 3 dx (accumulating) + bias_grad", timed(three_dx_cat_dw)))
    rows.append(("  cat alone", timed(lambda: torch.cat(parts, dim=1))))
    dqkv = torch.cat(parts, dim=1)
    rows.append(("  one dW GEMM [3C,N]x[N,C]", timed(lambda: dqkv.t() @ x)))
    rows.append(("  three dW GEMMs [C,N]x[N,C]", timed(lambda: [g.t() @ x for g in parts])))
    rows.append(("  one dx GEMM [N,3C]x[3C,C]", timed(lambda: dqkv @ w)))
    for name, cout, cin, blocks in (("qkv", C, C, 3), ("attn proj", C, C, 1), ("fc", H, C, 1),
                                    ("mlp proj", C, H, 1)):
        xi, gs = torch.randn(N, cin, **bf), [torch.randn(N, cout, **bf) for _ in range(blocks)]
        each = f" (x{blocks} blocks)" if blocks > 1 else ""
        rows.append((f"dW + db {name}{each}: torch dW GEMM + bias_grad",
                     timed(lambda: [(g.t() @ xi, bias_grad(g)) for g in gs])))
        rows.append(("  torch dW GEMM alone", timed(lambda: [g.t() @ xi for g in gs])))
        dw = torch.empty(cout, cin, **bf)
        try:
            g = gs[0]
            got_w, got_b = cublaslt.weight_bias_grad(g, xi)
            want_w, want_b = g.t().float() @ xi.float(), g.float().sum(0)
            err_w = ((got_w.float() - want_w).norm() / want_w.norm()).item()
            err_b = ((got_b.float() - want_b).norm() / want_b.norm()).item()
            rows.append((f"  cuBLASLt dW GEMM, BGRADB epilogue (rel. err dW {err_w:.1e}, db {err_b:.1e})",
                         timed(lambda: [cublaslt.weight_bias_grad(g, xi) for g in gs])))
            rows.append(("  cuBLASLt dW GEMM, no epilogue",
                         timed(lambda: [cublaslt._matmul(dw, xi, g, cin, cout, N, False, True, "default")
                                        for g in gs])))
        except cublaslt.CublasLtError as e:
            rows.append((f"  cuBLASLt BGRADB: {e}", float("nan")))
    print(f"| {N} tokens, C={C} | µs |\n|---|---:|")
    for name, us in rows:
        print(f"| {name} | {us:.1f} |")


if __name__ == "__main__":
    main()
