"""`gpt2pipe bench --nproc N` / `torchrun --nproc_per_node N -m gpt2pipe bench`: data-parallel scaling.

One invocation measures both sides, so the scaling efficiency compares numbers from the same machine and
moment: for each mode, process 0 first times it alone on its GPU (the 1-GPU baseline, the others waiting in
a collective), then all N processes time it with the same global batch — each mode's
1-GPU and N-GPU per-step losses are printed side by side and must agree to bf16 reduction order.

Per mode and process count: tokens/s, per-GPU MFU, scaling efficiency = tokens/s(N) / (N x tokens/s(1)),
peak memory per GPU (max over processes) and the exposed communication time of one profiled step
(bench/comm.py: NCCL running while nothing else runs on the GPU).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import torch
import torch.distributed as dist

from gpt2pipe import Gpt2pipeError, distributed
from gpt2pipe.bench.comm import CommTime
from gpt2pipe.bench.modes import MODES, micro_batch_for
from gpt2pipe.bench.step import StepResult, bench_device, device_name, fit_micro_batch, time_training_step
from gpt2pipe.model.gpt import GPT2_SIZES

BENCH_TIMEOUT_S = 3600


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def relaunch(argv: list[str], nproc: int) -> int:
    """Run this same `gpt2pipe bench` command as N processes under torch.distributed.run (one node); returns
    its exit status. argv: the bench subcommand's own arguments, without --nproc."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "gpt2pipe", "bench", *argv]
    print("+ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd).returncode


def _gather_max(value: float) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=bench_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def run(size: str, seq_len: int, total_batch: int, modes: tuple[str, ...], micro_batch: dict, steps: int,
        warmup: int, on_partial: Callable[[str], None] | None = None) -> str | None:
    """Under torchrun, mode by mode: process 0 alone (the others wait in a collective), then all processes.
    Returns the report on process 0 only; on_partial(report so far) is called there after each mode, so an
    interrupted run keeps the modes it finished."""
    cfg = GPT2_SIZES[size]
    micro = {**{m: micro_batch_for(size, m) for m in MODES}, **micro_batch}
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    # the baseline runs while the other processes wait in a collective: give it room (compile, 1558M)
    timeout = max(BENCH_TIMEOUT_S, distributed.collective_timeout().total_seconds())
    world = distributed.setup(bench_device().type, timeout_s=timeout)
    notes: list[str] = []
    base: dict[str, StepResult] = {}
    multi: dict[str, StepResult] = {}
    try:
        for mode in modes:
            if world.main:  # the 1-GPU baseline: process 0 alone, no process group involved
                base[mode] = fit_micro_batch(mode, cfg, micro[mode], seq_len, total_batch, steps, warmup, False,
                                             notes)
                print(f"{mode} on 1 GPU: {base[mode].ms:.1f} ms/step", flush=True)
            chosen = [base[mode].micro_batch if world.main else None]  # what fitted alone fits a share
            dist.broadcast_object_list(chosen, src=0)
            r = time_training_step(mode, cfg, chosen[0], seq_len, total_batch, steps, warmup, world=world)
            r.peak_gb = _gather_max(r.peak_gb)
            own_ms, r.ms = r.ms, _gather_max(r.ms)  # the slowest process sets the pace
            r.tokens_per_s = total_batch / (r.ms / 1e3)
            r.tflops *= own_ms / r.ms
            r.mfu = r.mfu * own_ms / r.ms if r.mfu is not None else None
            exposed = _gather_max(r.comm.exposed_ms if r.comm else 0.0)
            total = _gather_max(r.comm.total_ms if r.comm else 0.0)
            r.comm = CommTime(exposed, total, r.comm.step_ms) if r.comm else None
            multi[mode] = r
            if world.main:
                print(f"{mode} on {world.size} GPUs: {r.ms:.1f} ms/step", flush=True)
                if on_partial is not None:
                    on_partial(format_report(size, seq_len, total_batch, steps, warmup, world.size, base, multi,
                                             notes))
        if not world.main:
            return None
        return format_report(size, seq_len, total_batch, steps, warmup, world.size, base, multi, notes)
    finally:
        distributed.teardown(world)


def max_rel_diff(a: list[float], b: list[float]) -> float:
    return max((abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a, b)), default=0.0)


def format_report(size: str, seq_len: int, total_batch: int, steps: int, warmup: int, n: int,
                  base: dict[str, StepResult], multi: dict[str, StepResult], notes: list[str]) -> str:
    lines = [f"# gpt2pipe bench, data-parallel: 1 vs {n} GPUs ({device_name()}), torch "
             f"{torch.__version__}, GPT-2 {size}, T={seq_len}, {total_batch:,} tokens/step (same global batch "
             f"on both), median of {steps} steps after {warmup} warm-up", *notes, "",
             "| mode | GPUs | micro-batch | ms/step | tokens/s | MFU per GPU | scaling | peak GiB per GPU | "
             "exposed comm ms/step | comm ms/step |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for mode, one in base.items():
        if mode not in multi:
            continue
        many = multi[mode]
        for r in (one, many):
            mfu = f"{100 * r.mfu:.1f}%" if r.mfu else "-"
            scaling = "100%" if r is one else f"{100 * r.tokens_per_s / (n * one.tokens_per_s):.1f}%"
            comm = (f"{r.comm.exposed_ms:.1f} | {r.comm.total_ms:.1f}") if r.comm else "- | -"
            lines.append(f"| {mode} | {r.processes} | {r.micro_batch} | {r.ms:.1f} | {r.tokens_per_s:,.0f} | {mfu} | "
                         f"{scaling} | {r.peak_gb:.1f} | {comm} |")
    lines += ["", "Exposed comm: GPU time of one profiled step during which an NCCL kernel runs and no other "
              "kernel, copy or memset does (communication not hidden behind compute); comm: all NCCL kernel "
              "time. Scaling = tokens/s on N GPUs / (N x tokens/s on 1 GPU).", "",
              f"Per-step losses, 1 GPU vs {n} GPUs (same data and initial weights):"]
    for mode, one in base.items():
        if mode not in multi:
            continue
        lines.append(f"- {mode}: 1 GPU {[round(x, 4) for x in one.losses]}")
        lines.append(f"  {' ' * len(mode)}  {n} GPUs {[round(x, 4) for x in multi[mode].losses]} "
                     f"(max relative difference {max_rel_diff(one.losses, multi[mode].losses):.1e})")
    return "\n".join(lines)


def check_modes(modes: tuple[str, ...]) -> None:
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise Gpt2pipeError(f"--modes: unknown {unknown}; choose from {', '.join(MODES)}")
