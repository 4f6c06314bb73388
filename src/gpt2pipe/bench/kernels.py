"""`gpt2pipe bench`'s per-op table: every kernel we own against its torch reference at GPT-2 shapes.

Every extern "C" kernel of ops/kernels/*.cu has a row (tests/test_bench_kernels.py checks it on a GPU):
the vectorised kernels the model runs at GPT-2 shapes, their fp8-writing variants, the scalar fallbacks
that odd shapes take (launched directly at the same shapes), the fp8 casts, the global norm and AdamW,
and the fused classifier both alone and with its GEMMs (weight gradient summed in fp32 and in bf16).
The rows of each op family are in bench/kernel_rows.py.

Times are per call as the model makes it (autograd and launch overhead included), median of CUDA-event
timings after a warm-up (bench/timing.py); bytes are the least the op must move, so ours GB/s against the
device's copy bandwidth says how close a memory-bound kernel is to its limit. dev/kernels/ has the
per-version detail.
"""

from __future__ import annotations

import math

import torch

from gpt2pipe.bench import kernel_rows, timing
from gpt2pipe.config import ModelConfig
from gpt2pipe.ops.fp8 import has_fp8_gemms

COPY_BANDWIDTH = {"H100": 3.0e12, "H200": 4.3e12}  # measured device-to-device copy (read + write), bytes/s


def kernel_table(cfg: ModelConfig, tokens: int = 65536) -> list[tuple[str, float, float, float]]:
    """(name, our µs, torch µs, bytes moved) for each op at GPT-2 shapes over `tokens` tokens (torch µs is
    nan where the reference ran out of memory)."""
    torch.manual_seed(0)
    C, V, Vp, T = cfg.n_embd, cfg.vocab_size, cfg.padded_vocab_size, min(1024, cfg.block_size)
    N = tokens
    bf = dict(device="cuda", dtype=torch.bfloat16)
    rows = []

    def both(name, ours, ref, nbytes):
        ours_us = timing.time_us(ours)
        try:
            ref_us = timing.time_us(ref)
        except torch.cuda.OutOfMemoryError:
            ref_us = float("nan")
            torch.cuda.empty_cache()
        rows.append((name, ours_us, ref_us, nbytes))

    kernel_rows.gpt2_rows(both, N, C, V, Vp, T, bf)
    kernel_rows.arch_rows(both, N, C, cfg.n_head, bf)
    kernel_rows.classifier_rows(both, C, V, Vp, N, bf)
    if has_fp8_gemms():
        kernel_rows.fp8_rows(both, N, C, bf)
    kernel_rows.optimizer_rows(both, cfg)
    return rows


def format_table(rows: list[tuple[str, float, float, float]], tokens: int = 65536) -> list[str]:
    """The per-op table as markdown lines."""
    name = torch.cuda.get_device_name()
    bandwidth = next((v for k, v in COPY_BANDWIDTH.items() if k in name), None)
    lines = [f"| op, {tokens} tokens (one B=64 micro-batch), per call incl. launch | ours µs | torch µs | speedup "
             "| ours GB/s | of copy bandwidth |", "|---|---:|---:|---:|---:|---:|"]
    for op, ours, ref, nbytes in rows:
        gbs = nbytes / (ours * 1e-6) / 1e9
        frac = f"{100 * gbs * 1e9 / bandwidth:.0f}%" if bandwidth else "-"
        speedup = f"{ref / ours:.2f}x" if math.isfinite(ref) else "-"
        torch_us = f"{ref:.1f}" if math.isfinite(ref) else "out of memory"
        lines.append(f"| {op} | {ours:.1f} | {torch_us} | {speedup} | {gbs:,.0f} | {frac} |")
    return lines
