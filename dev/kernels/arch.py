"""The LLaMA-style ops of ops/arch.py (kernels/rmsnorm.cu, rope.cu, activation.cu): our kernels, through
their autograd Functions, against the torch references of reference.py (eager), forward and
forward + backward, bf16, at GPT-2 124M-sized shapes (65,536 tokens, C = 768, 12 heads of 64).

    python dev/kernels/arch.py
"""

from __future__ import annotations

import common
import torch

from gpt2pipe.ops import arch as A
from gpt2pipe.ops import reference as R


def validate() -> None:
    """Odd shapes (scalar kernels), misaligned and GQA inputs, against the fp32 reference."""
    torch.manual_seed(0)

    def check(label, ours_fn, ref_fn, *inputs):
        leaves = [t.detach().requires_grad_() for t in inputs]
        refs = [t.detach().float().requires_grad_() for t in inputs]
        ours, want = ours_fn(*leaves), ref_fn(*refs)
        ours, want = (ours, want) if isinstance(ours, tuple) else ((ours,), (want,))
        for i, (a, b) in enumerate(zip(ours, want)):
            common.check(f"{label} out{i}", a, b, 1e-2)
        seeds = [torch.randn_like(a) for a in ours]
        for i, (a, b) in enumerate(zip(torch.autograd.grad(ours, leaves, seeds),
                                       torch.autograd.grad(want, refs, [s.float() for s in seeds]))):
            common.check(f"{label} grad{i}", a, b, 2e-2)

    for N, C in [(77, 100), (1, 8), (333, 768), (5, 8192)]:
        x, r, w = torch.randn(N, C, **common.BF16), torch.randn(N, C, **common.BF16), torch.randn(C, **common.BF16)
        print(f"rmsnorm N={N} C={C}")
        check("rmsnorm", A.rmsnorm, R.rmsnorm, x, w)
        check("residual+rmsnorm", A.residual_rmsnorm, R.residual_rmsnorm, r, x, w)
    for B, T, H, G, D in [(2, 33, 8, 2, 128), (1, 7, 3, 1, 6), (4, 64, 12, 12, 64)]:
        cos, sin = R.rope_tables(2 * T, D, device="cuda")
        qkv = torch.randn(B, T, (H + 2 * G) * D, **common.BF16)
        for qk_norm in (True, False):
            print(f"qkv_rope B={B} T={T} H={H} G={G} D={D} qk_norm={qk_norm}")
            check("qkv_rope", lambda t: A.qkv_rope(t, H, G, cos, sin, qk_norm),
                  lambda t: R.qkv_rope(t, H, G, cos, sin, qk_norm), qkv)
    for N, F in [(33, 13), (4096, 2048), (5, 8)]:
        print(f"swiglu / relu2 N={N} F={F}")
        check("swiglu", A.swiglu, R.swiglu, torch.randn(N, 2 * F, **common.BF16) * 2)
        check("relu2", A.relu2, R.relu2, torch.randn(N, F, **common.BF16) * 2)


def fwd_bwd(fn, *inputs):
    """A callable running fn forward and backward (all outputs seeded with ones)."""
    leaves = [t.detach().requires_grad_() for t in inputs]

    def run():
        out = fn(*leaves)
        out = out if isinstance(out, tuple) else (out,)
        torch.autograd.backward(out, [torch.ones_like(o) for o in out])

    return run


def benchmark(N: int = 65536, C: int = 768, H: int = 12, D: int = 64) -> None:
    torch.manual_seed(0)
    x, r, w = torch.randn(N, C, **common.BF16), torch.randn(N, C, **common.BF16), torch.randn(C, **common.BF16)
    B, T = N // 1024, 1024
    qkv = torch.randn(B, T, 3 * H * D, **common.BF16)
    cos, sin = R.rope_tables(T, D, device="cuda")
    h_swiglu = torch.randn(N, 2 * 2048, **common.BF16)
    h_relu2 = torch.randn(N, 4 * C, **common.BF16)
    ops = [
        ("residual+rmsnorm", A.residual_rmsnorm, R.residual_rmsnorm, (r, x, w), 8 * N * C),
        ("rmsnorm (no gain)", lambda x: A.rmsnorm(x, None), lambda x: R.rmsnorm(x, None), (x,), 4 * N * C),
        ("qkv_rope qk_norm", lambda t: A.qkv_rope(t, H, H, cos, sin, True),
         lambda t: R.qkv_rope(t, H, H, cos, sin, True), (qkv,), 4 * qkv.numel()),
        ("swiglu F=2048", A.swiglu, R.swiglu, (h_swiglu,), 3 * h_swiglu.numel()),
        ("relu2 4C", A.relu2, R.relu2, (h_relu2,), 4 * h_relu2.numel()),
    ]
    for label, ours, ref, inputs, nbytes in ops:
        with torch.no_grad():
            rows = [("ours", common.time_us(lambda: ours(*inputs)), nbytes),
                    ("torch reference", common.time_us(lambda: ref(*inputs)), nbytes)]
        common.print_table(f"{label} forward, N={N}", rows)
        rows = [("ours", common.time_us(fwd_bwd(ours, *inputs)), 3 * nbytes),
                ("torch reference", common.time_us(fwd_bwd(ref, *inputs)), 3 * nbytes)]
        common.print_table(f"{label} forward + backward, N={N} (bytes: ~3x the forward's)", rows)


if __name__ == "__main__":
    common.require_gpu()
    validate()
    benchmark()
    common.finish()
