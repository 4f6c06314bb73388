"""Residual add + LayerNorm (kernels/layernorm.cu), forward and backward: the scalar kernels (one warp per
row, any C) against the vectorised `_vecV` ones (16-byte accesses, the row in registers; C % 8 == 0 and
C <= 2048) and torch's F.layer_norm.

    python dev/kernels/layernorm.py            # validate at odd shapes, then time at GPT-2 124M shapes
"""

from __future__ import annotations

import common
import torch
import torch.nn.functional as F

from gpt2pipe.ops.cuda import launch, sm_count

EPS = 1e-5
WARPS = 4  # backward: 4 warps per block (the vec kernels' __launch_bounds__ are 128 threads)


def versions(C: int) -> list[str]:
    return ["scalar"] + ([f"vec{(C + 255) // 256}"] if C % 8 == 0 and C <= 2048 else [])


def forward(version: str, x, residual, w, b):
    N, C = x.shape
    out = torch.empty_like(x)
    mean = torch.empty(N, device="cuda")
    rstd = torch.empty(N, device="cuda")
    res_out = None if residual is None else torch.empty_like(x)
    args = (out, mean, rstd, res_out, x, residual, w, b, N, C, EPS)
    if version == "scalar":
        launch("layernorm", "layernorm_forward", (N + 7) // 8, 256, *args)
    else:
        launch("layernorm", f"layernorm_forward_{version}", (N + 7) // 8, 256, *args, out8=None, inv_scale=None,
               amax_cur=None, amax_prev=None)
    return out, mean, rstd, res_out


def backward(version: str, dout, dres, inp, mean, rstd, w):
    N, C = inp.shape
    grid = max(1, min((N + WARPS - 1) // WARPS, sm_count() * 8))
    dx = torch.empty_like(inp)
    partials = torch.empty(grid, 2 * C, device="cuda")
    kernel = "layernorm_backward" if version == "scalar" else f"layernorm_backward_{version}"
    launch("layernorm", kernel, grid, 32 * WARPS, dx, partials, dout, dres, inp, mean, rstd, w, N, C,
           shared_mem=WARPS * 2 * C * 4)
    sums = partials.sum(0)
    return dx, sums[:C], sums[C:]


def reference(x, residual, w, b):
    """(residual + x rounded to bf16 as the kernel stores it, its LayerNorm in fp32)."""
    r = x if residual is None else (residual.float() + x.float()).bfloat16()
    return r, F.layer_norm(r.float(), (r.shape[-1],), w.float(), b.float(), EPS)


def validate(N: int, C: int) -> None:
    torch.manual_seed(0)
    x, residual = torch.randn(N, C, **common.BF16), torch.randn(N, C, **common.BF16) * 3
    w, b = torch.randn(C, **common.BF16) * 0.5, torch.randn(C, **common.BF16) * 0.5
    dout, dres = torch.randn(N, C, **common.BF16), torch.randn(N, C, **common.BF16)
    for version in versions(C):
        print(f"N={N} C={C} {version}")
        for res in (None, residual):
            what = "residual+layernorm" if res is not None else "layernorm"
            out, mean, rstd, res_out = forward(version, x, res, w, b)
            r, want = reference(x, res, w, b)
            if res is not None:
                common.check(f"{what} fwd residual sum", res_out, r.float(), 1e-2)
            common.check(f"{what} fwd", out, want, 1e-2)
            inp = x if res is None else res_out
            leaf = inp.float().requires_grad_()
            lw, lb = w.float().requires_grad_(), b.float().requires_grad_()
            ref = F.layer_norm(leaf, (C,), lw, lb, EPS)
            d_ref = torch.autograd.grad(ref, (leaf, lw, lb), dout.float())
            d_res = None if res is None else dres
            dx, dw, db = backward(version, dout, d_res, inp, mean, rstd, w)
            common.check(f"{what} bwd dx", dx, d_ref[0] + (0 if res is None else dres.float()), 2e-2)
            common.check(f"{what} bwd dw", dw, d_ref[1], 2e-2)
            common.check(f"{what} bwd db", db, d_ref[2], 2e-2)
            common.check_equal(f"{what} bwd deterministic", backward(version, dout, d_res, inp, mean, rstd, w)[1], dw)


def benchmark(N: int = 65536, C: int = 768) -> None:
    x, residual = torch.randn(N, C, **common.BF16), torch.randn(N, C, **common.BF16)
    w, b = torch.randn(C, **common.BF16), torch.randn(C, **common.BF16)
    dout, dres = torch.randn(N, C, **common.BF16), torch.randn(N, C, **common.BF16)
    rows = [(v, common.time_us(lambda v=v: forward(v, x, residual, w, b)), 8 * N * C) for v in versions(C)]
    rows.append(("torch (add + F.layer_norm)", common.time_us(lambda: F.layer_norm(residual + x, (C,), w, b, EPS)),
                 8 * N * C))
    common.print_table(f"residual+layernorm forward, N={N} C={C}", rows)
    _, mean, rstd, res_out = forward("scalar", x, residual, w, b)
    rows = [(v, common.time_us(lambda v=v: backward(v, dout, dres, res_out, mean, rstd, w)), 8 * N * C)
            for v in versions(C)]
    leaf = res_out.clone().requires_grad_()
    lw, lb = w.clone().requires_grad_(), b.clone().requires_grad_()
    ref = F.layer_norm(leaf, (C,), lw, lb, EPS)
    rows.append(("torch autograd", common.time_us(
        lambda: torch.autograd.grad(ref, (leaf, lw, lb), dout, retain_graph=True)), 8 * N * C))
    common.print_table(f"residual+layernorm backward, N={N} C={C}", rows)


if __name__ == "__main__":
    common.require_gpu()
    for shape in [(77, 100), (5, 1600), (1, 32), (333, 768), (8192, 768), (64, 2048), (3, 2056)]:
        validate(*shape)
    benchmark()
    common.finish()
