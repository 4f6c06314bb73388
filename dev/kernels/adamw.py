"""AdamW over one flat bf16 buffer with fp32 master weights (kernels/adamw.cu), round-to-nearest and
stochastic rounding, against ops/reference.adamw_update (and torch.optim.AdamW's fused step for time).
Stochastic rounding must be unbiased and repeat exactly for a seed.

    python dev/kernels/adamw.py
"""

from __future__ import annotations

import common
import torch

from gpt2pipe.ops import reference
from gpt2pipe.ops.cuda import launch, sm_count

HYPER = dict(lr=6e-4, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)


def state(n: int, seed: int = 0):
    """(params bf16, master fp32, m, v, grads bf16, clip [norm, factor]) of n elements."""
    torch.manual_seed(seed)
    master = torch.randn(n, device="cuda") * 0.02
    grads = (torch.randn(n, device="cuda") * 1e-3).bfloat16()
    clip = torch.tensor([1.0, 0.5], device="cuda")
    return master.bfloat16(), master, torch.zeros(n, device="cuda"), torch.zeros(n, device="cuda"), grads, clip


def update(s, step: int, n_decay: int, stochastic: bool, seed: int = 1, offset: int = 0) -> None:
    params, master, m, v, grads, clip = s
    n = master.numel()
    h = HYPER
    launch("adamw", "adamw_update", min((n + 255) // 256, sm_count() * 16), 256, params=params, master=master,
           m=m, v=v, grads=grads, clip=clip, n=n, n_decay=n_decay, offset=offset, lr=h["lr"], beta1=h["beta1"],
           beta2=h["beta2"], bias1=1 - h["beta1"] ** step, bias2=1 - h["beta2"] ** step, eps=h["eps"],
           weight_decay=h["weight_decay"], seed=seed, stochastic=int(stochastic))


def validate(n: int) -> None:
    n_decay = n // 2
    ours, ref = state(n), state(n)
    print(f"n={n}")
    for step in (1, 2, 3):
        update(ours, step, n_decay, stochastic=False)
        reference.adamw_update(*ref[:6], n_decay, HYPER["lr"], HYPER["beta1"], HYPER["beta2"], step, HYPER["eps"],
                               HYPER["weight_decay"])
    for name, a, b in zip(("params", "master", "m", "v"), ours[:4], ref[:4]):
        common.check(f"3 steps: {name}", a, b, 1e-5)
    rounded = [state(n) for _ in range(3)]
    for s, seed in zip(rounded, (1, 1, 2)):
        update(s, 1, n_decay, stochastic=True, seed=seed)
    err = rounded[0][0].float() - rounded[0][1]
    unbiased = abs(err.mean().item()) < 8 * err.abs().mean().item() / max(1.0, n ** 0.5) + 1e-9  # ~5 sigma
    print(f"  {'ok  ' if unbiased else 'FAIL'} stochastic rounding unbiased: mean error {err.mean().item():.2e}, "
          f"mean |error| {err.abs().mean().item():.2e}")
    if not unbiased:
        common.FAILURES.append("stochastic rounding unbiased")
    common.check_equal("stochastic rounding: same seed, same rounding", rounded[0][0], rounded[1][0])
    if n >= 1000:
        differ = (rounded[0][0] != rounded[2][0]).float().mean().item()
        print(f"  {'ok  ' if differ > 0.1 else 'FAIL'} another seed rounds {100 * differ:.0f}% of elements otherwise")
        if differ <= 0.1:
            common.FAILURES.append("stochastic rounding seeded")


def benchmark(n: int = 124_475_904) -> None:
    s = state(n)
    rows = [("ours, round to nearest", common.time_us(lambda: update(s, 1, n // 2, stochastic=False)), 26 * n),
            ("ours, stochastic rounding", common.time_us(lambda: update(s, 1, n // 2, stochastic=True)), 26 * n)]
    param = torch.nn.Parameter(s[1].clone())
    param.grad = s[4].float()
    fused = torch.optim.AdamW([param], lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    rows.append(("torch AdamW fused (fp32 weights)", common.time_us(fused.step), 26 * n))
    common.print_table(f"AdamW, {n:,} parameters (GPT-2 124M)", rows)


if __name__ == "__main__":
    common.require_gpu()
    for n in (1, 7, 1000, 65_537, 1 << 22):
        validate(n)
    benchmark()
    common.finish()
