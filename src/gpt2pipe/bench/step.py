"""`gpt2pipe bench`: one GPU, one process — a full GPT-2 training step several ways, then (bench/kernels.py)
each kernel alone.

Step table: our kernels (bf16, fp8, with recompute) vs torch eager vs torch.compile of the same model
(bf16 autocast, SDPA, fused AdamW), each doing the same optimizer step of `total_batch` tokens by
gradient accumulation over micro-batches. MFU is against one GPU's peak (this is one process on one GPU).
Synthetic tokens: the data pipeline is not what is timed.
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from dataclasses import dataclass

import torch

from gpt2pipe.bench.kernels import format_table, kernel_table
from gpt2pipe.config import ModelConfig
from gpt2pipe.device import peak_flops
from gpt2pipe.model.gpt import GPT, GPT2_SIZES


@dataclass
class StepResult:
    mode: str
    micro_batch: int
    ms: float
    tokens_per_s: float
    tflops: float
    mfu: float | None
    peak_gb: float
    losses: list[float]


def _sdpa_context():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    try:
        return sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION], set_priority=True)
    except TypeError:  # older torch: no priorities
        return sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION])


def time_training_step(mode: str, cfg: ModelConfig, micro_batch: int, seq_len: int, total_batch: int,
                       steps: int, warmup: int, profile: bool = False) -> StepResult:
    from gpt2pipe.config import from_dict
    from gpt2pipe.train.optim import make_flat_optimizer, make_optimizer, optimizer_step

    device = torch.device("cuda")
    torch.manual_seed(0)
    t = from_dict({}).train  # the 124M recipe's optimizer: lr 6e-4, betas 0.9/0.95, decay 0.1, clip 1.0
    kernels = mode.startswith("kernels")
    model = GPT(cfg, ops="kernels" if kernels else "torch", recompute=mode == "kernels-recompute").to(device)
    if mode == "kernels-fp8":
        from gpt2pipe.ops.fp8 import convert_to_fp8

        convert_to_fp8(model)
    # the training loop's own optimizers: flat bf16 AdamW for the kernels, fused torch AdamW otherwise
    opt = make_flat_optimizer(model, t) if kernels else make_optimizer(model, t, device)
    amp = contextlib.nullcontext() if kernels else torch.autocast("cuda", dtype=torch.bfloat16)
    runner = torch.compile(model) if mode == "compile" else model
    accum = total_batch // (micro_batch * seq_len)
    data = torch.randint(0, cfg.vocab_size, (accum, micro_batch, seq_len + 1), device=device)
    flops = model.flops_per_token(seq_len) * total_batch
    times, losses = [], []
    torch.cuda.reset_peak_memory_stats()
    with _sdpa_context():
        for i in range(warmup + steps):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            total = torch.zeros((), device=device)
            for k in range(accum):
                with amp:
                    _, loss = runner(data[k, :, :-1], data[k, :, 1:])
                (loss / accum).backward()
                total += loss.detach()
            optimizer_step(opt, t.learning_rate)
            losses.append((total / accum).item())
            torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    if profile:  # one more step under the profiler: where the time goes, kernel by kernel
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        with _sdpa_context(), torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
            for k in range(accum):
                with amp:
                    _, loss = runner(data[k, :, :-1], data[k, :, 1:])
                (loss / accum).backward()
            optimizer_step(opt, t.learning_rate)
            torch.cuda.synchronize()
        print(f"## profile of one {mode} step (CUDA time per kernel)")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=70))
    dt = statistics.median(times)
    peak = peak_flops(device)
    result = StepResult(mode, micro_batch, dt * 1e3, total_batch / dt, flops / dt / 1e12,
                        flops / dt / peak if peak else None, torch.cuda.max_memory_allocated() / 2**30, losses)
    del model, opt, runner, data
    gc.collect()
    torch.cuda.empty_cache()
    return result


def run(size: str = "124M", seq_len: int = 1024, total_batch: int = 524288, modes=("kernels", "eager", "compile"),
        micro_batch: dict | None = None, steps: int = 5, warmup: int = 2, kernels: bool = True,
        profile: tuple[str, ...] = ()) -> str:
    cfg = GPT2_SIZES[size]
    micro_batch = {"kernels": 64, "kernels-fp8": 64, "kernels-recompute": 128, "eager": 32, "compile": 64, **(micro_batch or {})}
    name = torch.cuda.get_device_name()
    lines = [f"# gpt2pipe bench on {name}, torch {torch.__version__}, GPT-2 {size}, T={seq_len}, "
             f"{total_batch:,} tokens/step, median of {steps} steps after {warmup} warm-up"]
    results = []
    for mode in modes:
        b = micro_batch[mode]
        while True:
            try:
                results.append(time_training_step(mode, cfg, b, seq_len, total_batch, steps, warmup,
                                                  profile=mode in profile))
                break
            except torch.cuda.OutOfMemoryError:
                gc.collect()
                torch.cuda.empty_cache()
                lines.append(f"# {mode}: micro-batch {b} ran out of memory, trying {b // 2}")
                b //= 2
                if b == 0:
                    raise
        print(f"{mode}: {results[-1].ms:.1f} ms/step, losses {[round(x, 4) for x in results[-1].losses]}", flush=True)
    base = next((r for r in results if r.mode == "compile"), None)
    lines.append("| mode | micro-batch | ms/step | tokens/s | TFLOP/s | MFU (per GPU) | peak GiB | vs torch.compile |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        ratio = f"{base.ms / r.ms:.3f}x" if base else "-"
        mfu = f"{100 * r.mfu:.1f}%" if r.mfu else "-"
        lines.append(f"| {r.mode} | {r.micro_batch} | {r.ms:.1f} | {r.tokens_per_s:,.0f} | {r.tflops:.1f} | {mfu} | "
                     f"{r.peak_gb:.1f} | {ratio} |")
    if kernels:
        lines.append("")
        lines += format_table(kernel_table(cfg))
    return "\n".join(lines)
