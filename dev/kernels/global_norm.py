"""Global gradient norm and clip factor on the device (kernels/global_norm.cu): per-block partial sums of
squares, then one block adds them in a fixed order and writes [norm, min(1, max_norm / (norm + 1e-6))],
against torch.linalg.vector_norm and clip_grad_norm_'s rule (ops/reference.py).

    python dev/kernels/global_norm.py
"""

from __future__ import annotations

import common
import torch

from gpt2pipe.ops import reference
from gpt2pipe.ops.cuda import launch, sm_count


def global_norm(grads, max_norm: float, blocks: int | None = None):
    blocks = blocks or sm_count() * 2
    partials = torch.empty(blocks, device="cuda")
    out = torch.empty(2, device="cuda")
    launch("global_norm", "global_norm_partial", blocks, 1024, partials=partials, g=grads, n=grads.numel())
    launch("global_norm", "global_norm_finalize", 1, 1024, out=out, partials=partials, count=blocks,
           max_norm=float(max_norm))
    return out


def validate(n: int) -> None:
    torch.manual_seed(0)
    grads = (torch.randn(n, device="cuda") * 1e-2).bfloat16()
    for max_norm in (1.0, 1e-3, 0.0):
        print(f"n={n} max_norm={max_norm}")
        want = reference.global_norm_scale(grads, max_norm)
        for blocks in (None, 1, 7):
            common.check(f"[norm, clip] with {blocks or 'auto'} blocks", global_norm(grads, max_norm, blocks), want, 1e-5)
        common.check_equal("deterministic", global_norm(grads, max_norm), global_norm(grads, max_norm))


def benchmark(n: int = 124_475_904) -> None:
    grads = torch.randn(n, **common.BF16)
    rows = [(f"ours, {b or 'auto'} blocks", common.time_us(lambda b=b: global_norm(grads, 1.0, b)), 2 * n)
            for b in (None, sm_count() * 8)]
    rows.append(("torch vector_norm (fp32)", common.time_us(lambda: reference.global_norm_scale(grads, 1.0)), 2 * n))
    common.print_table(f"global norm + clip factor, {n:,} bf16 gradients (GPT-2 124M)", rows)


if __name__ == "__main__":
    common.require_gpu()
    for n in (1, 1000, 1023, 1 << 20, 3_000_017):
        validate(n)
    benchmark()
    common.finish()
