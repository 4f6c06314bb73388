"""Timing one call on the GPU: the median of CUDA-event timings after a warm-up (the per-op table, and the
dev/ kernel sweeps)."""

from __future__ import annotations

import statistics

import torch


def time_ms(fn, reps: int = 20, warmup: int = 3) -> float:
    """Median milliseconds of fn() over reps, timed with CUDA events after a warm-up."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b))
    return statistics.median(out)


def time_us(fn, reps: int = 20, warmup: int = 3) -> float:
    """time_ms in microseconds, the unit of the per-op tables."""
    return time_ms(fn, reps, warmup) * 1e3


def grad_of(out, inputs, seed):
    """A backward pass to time: the gradients of out (seeded) with respect to inputs, the graph kept."""
    return lambda: torch.autograd.grad(out, inputs, seed, retain_graph=True)
