"""Bias + GELU (tanh) after the MLP's first matmul (kernels/gelu.cu), forward and backward with the bias
gradient: the scalar kernels (one column per thread) against the `_vec` ones (8 columns per thread,
16-byte accesses; C % 8 == 0) and torch. The `_fp8` variants are in dev/kernels/fp8.py.

    python dev/kernels/gelu.py
"""

from __future__ import annotations

import common
import torch
import torch.nn.functional as F

from gpt2pipe.ops.cuda import aligned, launch
from gpt2pipe.ops.linear import column_grid


def versions(C: int) -> list[str]:
    return ["scalar"] + (["vec"] if C % 8 == 0 else [])


def grid(version: str, N: int, C: int) -> tuple[tuple[int, int], int]:
    """(grid, threads) as the model lays them out: x tiles the columns, y strides the rows."""
    return column_grid(N, C, version == "vec")


def forward(version: str, h, bias):
    N, C = h.shape
    out = torch.empty_like(h)
    blocks, threads = grid(version, N, C)
    kernel = "bias_gelu_forward" + ("_vec" if version == "vec" else "")
    launch("gelu", kernel, blocks, threads, out=out, h=h, bias=bias, N=N, C=C)
    return out


def backward(version: str, dout, h, bias):
    N, C = h.shape
    blocks, threads = grid(version, N, C)
    dh = torch.empty_like(h)
    partials = torch.empty(blocks[1], C, device="cuda")
    kernel = "bias_gelu_backward" + ("_vec" if version == "vec" else "")
    launch("gelu", kernel, blocks, threads, dh=dh, partials=partials, dout=dout, h=h, bias=bias, N=N, C=C)
    return dh, partials.sum(0)


def validate(N: int, C: int) -> None:
    torch.manual_seed(0)
    h, bias, dout = torch.randn(N, C, **common.BF16) * 2, torch.randn(C, **common.BF16), torch.randn(N, C, **common.BF16)
    hf, bf = h.float().requires_grad_(), bias.float().requires_grad_()
    want = F.gelu(hf + bf, approximate="tanh")
    d_want = torch.autograd.grad(want, (hf, bf), dout.float())
    for version in versions(C):
        if version == "vec" and not aligned(h, bias, dout):
            continue
        print(f"N={N} C={C} {version}")
        common.check("bias+gelu fwd", forward(version, h, bias), want, 1e-2)
        dh, db = backward(version, dout, h, bias)
        common.check("bias+gelu bwd dh", dh, d_want[0], 2e-2)
        common.check("bias+gelu bwd dbias", db, d_want[1], 2e-2)
        common.check_equal("bias+gelu bwd deterministic", backward(version, dout, h, bias)[1], db)


def benchmark(N: int = 65536, C: int = 3072) -> None:
    h, bias, dout = torch.randn(N, C, **common.BF16), torch.randn(C, **common.BF16), torch.randn(N, C, **common.BF16)
    rows = [(v, common.time_us(lambda v=v: forward(v, h, bias)), 4 * N * C) for v in versions(C)]
    rows.append(("torch", common.time_us(lambda: F.gelu(h + bias, approximate="tanh")), 4 * N * C))
    common.print_table(f"bias+gelu forward, N={N} C={C}", rows)
    rows = [(v, common.time_us(lambda v=v: backward(v, dout, h, bias)), 6 * N * C) for v in versions(C)]
    hg, bg = h.clone().requires_grad_(), bias.clone().requires_grad_()
    ref = F.gelu(hg + bg, approximate="tanh")
    rows.append(("torch autograd", common.time_us(
        lambda: torch.autograd.grad(ref, (hg, bg), dout, retain_graph=True)), 6 * N * C))
    common.print_table(f"bias+gelu backward (with dbias), N={N} C={C}", rows)


if __name__ == "__main__":
    common.require_gpu()
    for shape in [(33, 300), (1, 7), (5, 8), (4096, 3072), (1000, 6400), (17, 1000)]:
        validate(*shape)
    benchmark()
    common.finish()
