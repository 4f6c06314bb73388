"""Shared by the dev/kernels scripts (llm.c's dev/cuda/common.h habit): validate a kernel against its torch
reference, time versions side by side with CUDA events, print the table, exit non-zero on any mismatch.

Each script `python dev/kernels/<op>.py` (on a GPU, from anywhere) imports gpt2pipe from this checkout's
src/ (the kernels being developed), whatever else is installed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from gpt2pipe.bench.timing import time_ms  # noqa: E402  (after the path to this checkout's package)

FAILURES: list[str] = []
BF16 = dict(device="cuda", dtype=torch.bfloat16)


def require_gpu() -> None:
    """Stop (exit 2) unless a CUDA GPU and our kernels are usable: these scripts measure real kernels."""
    from gpt2pipe.ops import kernels_available

    if not kernels_available():
        print("needs a CUDA GPU with CuPy and the kernel sources", file=sys.stderr)
        sys.exit(2)
    print(f"# {Path(sys.argv[0]).name} on {torch.cuda.get_device_name()}, torch {torch.__version__}")


def rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.double(), want.double()
    if not torch.isfinite(got).all():
        return float("inf")
    return ((got - want).norm() / want.norm().clamp_min(1e-30)).item()


def check(label: str, got: torch.Tensor, want: torch.Tensor, tolerance: float) -> bool:
    """Relative L2 error of got against the reference, printed; a failure is remembered for finish()."""
    err = rel_error(got, want)
    ok = err <= tolerance
    print(f"  {'ok  ' if ok else 'FAIL'} {label}: rel error {err:.2e} (tolerance {tolerance:.0e})")
    if not ok:
        FAILURES.append(label)
    return ok


def check_equal(label: str, got: torch.Tensor, want: torch.Tensor) -> bool:
    """Bit-for-bit equality (determinism, versions that must agree exactly)."""
    ok = got.shape == want.shape and torch.equal(got, want)
    print(f"  {'ok  ' if ok else 'FAIL'} {label}: {'identical' if ok else 'differs'}")
    if not ok:
        FAILURES.append(label)
    return ok


def time_us(fn, reps: int = 50, warmup: int = 5) -> float:
    """Median microseconds per call of fn(), CUDA events around each call after a warm-up."""
    return 1e3 * time_ms(fn, reps, warmup)


def print_table(title: str, rows: list[tuple[str, float, float]]) -> None:
    """rows: (version, µs per call, bytes it must move) -> a markdown table with GB/s and speed vs the first."""
    print(f"\n{title}\n| version | µs | GB/s | vs {rows[0][0]} |\n|---|---:|---:|---:|")
    for name, us, nbytes in rows:
        print(f"| {name} | {us:.1f} | {nbytes / (us * 1e-6) / 1e9:,.0f} | {rows[0][1] / us:.2f}x |")


def finish() -> None:
    """Exit 1 if any check failed (so a script run is a test), else 0."""
    if FAILURES:
        print(f"\n{len(FAILURES)} validation failure(s): {', '.join(FAILURES)}", file=sys.stderr)
        sys.exit(1)
    print("\nall validations passed")
    sys.exit(0)
