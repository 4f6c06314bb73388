"""`gpt2pipe bench`: one GPU, one process — a full GPT-2 training step several ways, then (bench/kernels.py)
each kernel alone.

Step table: our kernels (bf16, fp8, with recompute) vs torch eager vs torch.compile of the same model
(bf16 autocast, SDPA, fused AdamW), each doing the same optimizer step of `total_batch` tokens by
gradient accumulation over micro-batches. MFU is per GPU. Synthetic tokens: the data pipeline is not what is
timed. The same step runs as one of several processes (bench/scaling.py): each takes its share of the
micro-batches, with the gradient communication the training loop uses.
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from gpt2pipe import Gpt2pipeError, distributed
from gpt2pipe.bench.comm import CommTime, comm_time_of_trace
from gpt2pipe.bench.kernels import format_table, kernel_table
from gpt2pipe.config import ModelConfig
from gpt2pipe.device import peak_flops
from gpt2pipe.distributed import World
from gpt2pipe.model.gpt import GPT, GPT2_SIZES


@dataclass
class StepResult:
    mode: str
    micro_batch: int
    ms: float
    tokens_per_s: float
    tflops: float
    mfu: float | None          # per GPU: the step's FLOP/s over (processes x one GPU's peak)
    peak_gb: float             # this process's peak allocated memory (max over processes once gathered)
    losses: list[float]        # per step, averaged over processes
    processes: int = 1
    comm: CommTime | None = None  # from one profiled step; None on one process


def bench_device() -> torch.device:
    """The current CUDA device; the CPU only where there is none (the harness's own CPU test: no timings
    worth reading, but the same code path end to end)."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def _sdpa_context():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    try:
        return sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION], set_priority=True)
    except TypeError:  # older torch: no priorities
        return sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION])


class _Step:
    """One optimizer step of `total_batch` tokens on this process's share of the micro-batches: our flat
    ZeRO-1 AdamW on the kernels paths, torch's fused AdamW under DDP (bucketed all-reduce, synchronised only
    on the last micro-batch) on the torch paths — what the training loop uses for each."""

    def __init__(self, mode: str, cfg: ModelConfig, micro_batch: int, seq_len: int, total_batch: int,
                 world: World):
        from gpt2pipe.config import from_dict
        from gpt2pipe.train.optim import make_flat_optimizer, make_optimizer

        self.device = bench_device()
        self.world, self.mode = world, mode
        torch.manual_seed(0)  # same weights and data on every process
        self.t = from_dict({}).train  # the 124M recipe's optimizer: lr 6e-4, betas 0.9/0.95, decay 0.1, clip 1
        self.kernels = mode.startswith("kernels")
        model = GPT(cfg, ops="kernels" if self.kernels else "torch", recompute=mode == "kernels-recompute")
        model = model.to(self.device)
        if mode == "kernels-fp8":
            from gpt2pipe.ops.fp8 import convert_to_fp8

            convert_to_fp8(model)
        self.model = model
        self.opt = make_flat_optimizer(model, self.t, world) if self.kernels else make_optimizer(model, self.t,
                                                                                                  self.device)
        self.amp = contextlib.nullcontext() if self.kernels else torch.autocast(self.device.type, dtype=torch.bfloat16)
        runner = model
        self.ddp = None
        if world.distributed and not self.kernels:
            from torch.nn.parallel import DistributedDataParallel

            runner = self.ddp = DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.runner = torch.compile(runner) if mode == "compile" else runner
        per_step = micro_batch * seq_len * world.size
        if total_batch % per_step:
            raise Gpt2pipeError(f"--total-batch {total_batch} is not a multiple of micro-batch {micro_batch} x "
                                f"seq-len {seq_len} x {world.size} processes")
        self.accum = total_batch // per_step
        # the whole step's batch on every process (same seed), each taking its own consecutive micro-batches:
        # one process and N processes see the same tokens, so their losses must agree
        data = torch.randint(0, cfg.vocab_size, (self.accum * world.size, micro_batch, seq_len + 1),
                             device=self.device)
        self.data = data[world.rank * self.accum : (world.rank + 1) * self.accum].clone()
        del data
        self.flops = model.flops_per_token(seq_len) * total_batch

    def __call__(self) -> torch.Tensor:
        total = torch.zeros((), device=self.device)
        for k in range(self.accum):
            last = k == self.accum - 1
            if last and self.kernels:
                self.opt.prepare_last_backward()  # ZeRO-1: reduce-scatter buckets during this backward
            if self.ddp is not None:
                self.ddp.require_backward_grad_sync = last  # all-reduce only once per step
            with self.amp:
                _, loss = self.runner(self.data[k, :, :-1], self.data[k, :, 1:])
            (loss / self.accum).backward()
            total += loss.detach()
        from gpt2pipe.train.optim import optimizer_step

        optimizer_step(self.opt, self.t.learning_rate)
        return distributed.mean(total / self.accum, self.world)


def time_training_step(mode: str, cfg: ModelConfig, micro_batch: int, seq_len: int, total_batch: int,
                       steps: int, warmup: int, profile: bool = False, world: World = World()) -> StepResult:
    """Median step time of `steps` steps after `warmup`; on several processes also the communication time of
    one more, profiled, step (bench/comm.py). profile: print a per-kernel profile of one more step."""
    step = _Step(mode, cfg, micro_batch, seq_len, total_batch, world)
    cuda = step.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    times, losses = [], []
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with _sdpa_context():
        for i in range(warmup + steps):
            sync()
            t0 = time.perf_counter()
            loss = step()
            losses.append(loss.item())  # host sync: the step is complete on this process
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        comm = None
        if profile or world.distributed:
            from torch.profiler import ProfilerActivity
            from torch.profiler import profile as torch_profile

            distributed.barrier(world)
            sync()
            with torch_profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
                step()
                sync()
            if world.distributed:
                with tempfile.TemporaryDirectory() as tmp:
                    trace = Path(tmp) / "trace.json"
                    prof.export_chrome_trace(str(trace))
                    comm = comm_time_of_trace(trace)
            if profile and world.main:
                print(f"## profile of one {mode} step (CUDA time per kernel)")
                print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=70))
    dt = statistics.median(times)
    peak = peak_flops(step.device)
    result = StepResult(mode, micro_batch, dt * 1e3, total_batch / dt, step.flops / dt / 1e12,
                        step.flops / dt / (peak * world.size) if peak else None,
                        torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0, losses, world.size, comm)
    del step
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    import torch._dynamo as dynamo  # (binding the name torch here would make torch local to the function)

    dynamo.reset()  # the next mode (or process count) compiles afresh
    return result


DEFAULT_MICRO_BATCH = {"kernels": 64, "kernels-fp8": 64, "kernels-recompute": 128, "eager": 32, "compile": 64}


def fit_micro_batch(mode: str, cfg: ModelConfig, b: int, seq_len: int, total_batch: int, steps: int, warmup: int,
                    profile: bool, notes: list[str]) -> StepResult:
    """Time one mode on this process alone, halving the micro-batch on out-of-memory."""
    while True:
        try:
            return time_training_step(mode, cfg, b, seq_len, total_batch, steps, warmup, profile=profile)
        except torch.cuda.OutOfMemoryError:
            gc.collect()
            torch.cuda.empty_cache()
            notes.append(f"# {mode}: micro-batch {b} ran out of memory, trying {b // 2}")
            b //= 2
            if b == 0:
                raise


def run(size: str = "124M", seq_len: int = 1024, total_batch: int = 524288, modes=("kernels", "eager", "compile"),
        micro_batch: dict | None = None, steps: int = 5, warmup: int = 2, kernels: bool = True,
        profile: tuple[str, ...] = ()) -> str:
    cfg = GPT2_SIZES[size]
    micro_batch = {**DEFAULT_MICRO_BATCH, **(micro_batch or {})}
    name = torch.cuda.get_device_name()
    lines = [f"# gpt2pipe bench on {name}, torch {torch.__version__}, GPT-2 {size}, T={seq_len}, "
             f"{total_batch:,} tokens/step, median of {steps} steps after {warmup} warm-up"]
    results = []
    for mode in modes:
        results.append(fit_micro_batch(mode, cfg, micro_batch[mode], seq_len, total_batch, steps, warmup,
                                       mode in profile, lines))
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
