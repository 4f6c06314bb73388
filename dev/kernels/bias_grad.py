"""A linear layer's bias gradient, the column sums of dout [N, C] (kernels/bias_grad.cu): per-row-group
partial sums added in a fixed order (deterministic), 8 columns per thread (C % 8 == 0), against torch's
dout.sum(0) at the shapes of GPT-2's four linear layers and at odd ones.

    python dev/kernels/bias_grad.py
"""

from __future__ import annotations

import common
import torch

from gpt2pipe.ops.cuda import launch, sm_count


def bias_grad(dout, row_groups: int | None = None):
    """The kernel with gridDim.y row groups (None: as ops/linear.py picks, sm_count * 16 / column tiles)."""
    N, C = dout.shape
    threads = 128
    cols = (C // 8 + threads - 1) // threads
    groups = row_groups or max(1, min(N, sm_count() * 16 // cols))
    partials = torch.empty(groups, C, device="cuda")
    launch("bias_grad", "bias_grad", (cols, groups), threads, partials=partials, dout=dout, N=N, C=C)
    return partials.sum(0)


def validate(N: int, C: int) -> None:
    torch.manual_seed(0)
    dout = torch.randn(N, C, **common.BF16)
    print(f"N={N} C={C}")
    want = dout.float().sum(0)
    got = bias_grad(dout)
    common.check("bias grad", got, want, 1e-3)
    common.check("bias grad, one row group", bias_grad(dout, 1), want, 1e-3)
    common.check_equal("bias grad deterministic", bias_grad(dout), got)


def benchmark(N: int = 65536) -> None:
    for C, layer in ((2304, "qkv"), (768, "attn proj / mlp proj"), (3072, "mlp fc")):
        dout = torch.randn(N, C, **common.BF16)
        rows = [(f"ours, {groups or 'auto'} row groups", common.time_us(lambda g=groups: bias_grad(dout, g)), 2 * N * C)
                for groups in (None, 264, 1056)]
        rows.append(("torch dout.sum(0)", common.time_us(lambda: dout.sum(0)), 2 * N * C))
        rows.append(("torch dout.float().sum(0)", common.time_us(lambda: dout.float().sum(0)), 2 * N * C))
        common.print_table(f"bias grad ({layer}), N={N} C={C}", rows)


if __name__ == "__main__":
    common.require_gpu()
    for shape in [(1, 8), (7, 16), (33, 40), (4096, 2304), (5000, 768)]:
        validate(*shape)
    benchmark()
    common.finish()
