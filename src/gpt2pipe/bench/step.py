"""One mode's GPT-2 training step, timed (`gpt2pipe bench`'s step table is bench/step_table.py).

Every mode (bench/modes.py) does the same optimizer step of `total_batch` tokens by gradient accumulation
over micro-batches, from the same initial weights over the same tokens, so their first losses and gradient
norms agree. MFU is per GPU. Synthetic tokens: the data pipeline is not what is timed. The same step runs
as one of several processes (bench/scaling.py): each takes its share of the micro-batches, with the
gradient communication the training loop uses.
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gpt2pipe import Gpt2pipeError, distributed
from gpt2pipe.bench import compiled, nanogpt_ref
from gpt2pipe.bench.comm import CommTime, comm_time_of_trace
from gpt2pipe.bench.modes import FP8_MODES, KERNEL_MODES, MODES
from gpt2pipe.config import ModelConfig
from gpt2pipe.device import peak_flops, sdpa_fastest_first
from gpt2pipe.distributed import World
from gpt2pipe.model.gpt import GPT


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
    norms: list[float] = field(default_factory=list)  # pre-clip global gradient norm per step
    note: str = ""
    trusted: bool = True       # False: failed its correctness check (never the baseline)


def bench_device() -> torch.device:
    """The current CUDA device; the CPU only where there is none (the harness's own CPU test: no timings
    worth reading, but the same code path end to end)."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"


def _sdpa_context(mode: str):
    """cuDNN attention first (what `gpt2pipe train` uses on CUDA) for our kernels modes and the recipes that
    ask for it; torch's default order (flash first: what nanoGPT gets) for the others."""
    recipe = compiled.RECIPES.get(mode)
    if not (mode in KERNEL_MODES or (recipe is not None and recipe.cudnn_attention)):
        return contextlib.nullcontext()
    return sdpa_fastest_first()


REFUSED: dict[str, list[str]] = {}  # mode -> the fusions the kernels turned off while timing it (a shape refused)


@contextlib.contextmanager
def kernel_switches(mode: str):
    """The kernels path as `mode` times it: the fused classifier's weight gradient summed in fp32 (bf16 in
    kernels-dw-bf16), and the fusions as they are by default (all off in kernels-unfused, the step as it was
    before them; the bias gradients in the weight-gradient GEMMs on in kernels-bgrad)."""
    from gpt2pipe.ops import FUSIONS
    from gpt2pipe.ops.classifier import FusedClassifier

    old = FusedClassifier.dw_fp32, dict(FUSIONS)
    FusedClassifier.dw_fp32 = mode != "kernels-dw-bf16"
    if mode == "kernels-unfused":
        FUSIONS.update(dict.fromkeys(FUSIONS, False))
    elif mode == "kernels-bgrad":
        FUSIONS["bgrad_epilogue"] = True
    asked = [name for name, on in FUSIONS.items() if on]
    REFUSED.pop(mode, None)  # each timing (another size, a halved micro-batch) answers for itself
    try:
        yield
    finally:  # a fusion that cannot run a shape switches itself off (with a warning) and the step runs without
        refused = [name for name in asked if not FUSIONS[name]]
        if refused:
            REFUSED[mode] = refused
        FusedClassifier.dw_fp32 = old[0]
        FUSIONS.update(old[1])


class _Step:
    """One optimizer step of `total_batch` tokens on this process's share of the micro-batches: our flat
    ZeRO-1 AdamW on the kernels paths, torch's fused AdamW under DDP (bucketed all-reduce, synchronised only
    on the last micro-batch) on the torch paths — what the training loop uses for each; `nanogpt` the
    reference recipe's own model and optimizer (bench/nanogpt_ref.py)."""

    def __init__(self, mode: str, cfg: ModelConfig, micro_batch: int, seq_len: int, total_batch: int,
                 world: World, compile_mode: str | None = None):
        from gpt2pipe.config import from_dict
        from gpt2pipe.train.optim import make_flat_optimizer, make_optimizer

        if mode not in MODES:
            raise Gpt2pipeError(f"unknown bench mode {mode!r}; choose from {', '.join(MODES)}")
        self.device = bench_device()
        self.world, self.mode = world, mode
        torch.manual_seed(0)  # same weights and data on every process and in every mode
        self.t = from_dict({}).train  # the 124M recipe's optimizer: lr 6e-4, betas 0.9/0.95, decay 0.1, clip 1
        self.kernels, self.nanogpt = mode in KERNEL_MODES, mode == "nanogpt"
        with torch.device("meta"):
            self.flops = GPT(cfg).flops_per_token(seq_len) * total_batch  # our count for every mode
        if self.nanogpt:  # the reference recipe: its own model and optimizer (bench/nanogpt_ref.py)
            model = nanogpt_ref.NanoGPT(cfg).to(self.device)
            self.opt = nanogpt_ref.optimizer(model, self.t.learning_rate)
        else:
            model = GPT(cfg, ops="kernels" if self.kernels else "torch", recompute=mode == "kernels-recompute")
            model = model.to(self.device)
            if mode in FP8_MODES:
                from gpt2pipe.ops.fp8 import convert_to_fp8

                convert_to_fp8(model, FP8_MODES[mode])
            self.opt = make_flat_optimizer(model, self.t, world) if self.kernels else make_optimizer(
                model, self.t, self.device)
        self.model = model
        self.amp = contextlib.nullcontext() if self.kernels else torch.autocast(self.device.type, dtype=torch.bfloat16)
        self.ddp = None

        def wrap(module):  # DDP around what runs (and is compiled) on the torch paths of several processes
            if not (world.distributed and not self.kernels):
                return module
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(
                module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            return self.ddp

        recipe = compiled.RECIPES.get(mode)
        if self.nanogpt:
            self.runner, self.returns_logits, self.hold_logits = torch.compile(wrap(model)), False, False
        elif recipe is not None:
            self.runner, self.returns_logits = compiled.build(model, recipe, wrap, compile_mode)
            self.hold_logits = recipe.hold_logits
        else:  # kernels (which return no logits with a loss) and eager
            self.runner, self.returns_logits, self.hold_logits = wrap(model), True, True
        self.cudagraphs = recipe is not None and compiled.uses_cudagraphs(compile_mode or recipe.mode)
        self.held = None  # the last micro-batch's logits, kept as `_, loss = model(x, y)` in the loop keeps them
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

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean loss over the step, pre-clip gradient norm), both on the device."""
        from gpt2pipe.train.optim import optimizer_step

        total = torch.zeros((), device=self.device)
        if self.cudagraphs:
            compiled.start_cudagraph_step(self.model.parameters())
        with kernel_switches(self.mode):
            for k in range(self.accum):
                if self.cudagraphs:
                    torch.compiler.cudagraph_mark_step_begin()
                last = k == self.accum - 1
                if last and self.kernels:
                    self.opt.prepare_last_backward()  # ZeRO-1: reduce-scatter buckets during this backward
                if self.ddp is not None:
                    self.ddp.require_backward_grad_sync = last  # all-reduce only once per step
                with self.amp:
                    out = self.runner(self.data[k, :, :-1], self.data[k, :, 1:])
                if self.returns_logits:
                    logits, loss = out
                    self.held = logits if self.hold_logits else None
                    del logits
                else:
                    loss = out
                (loss / self.accum).backward()
                total += loss.detach()
            norm = nanogpt_ref.update(self.opt, self.model) if self.nanogpt else optimizer_step(self.opt,
                                                                                                 self.t.learning_rate)
        return distributed.mean(total / self.accum, self.world), norm


def release(cuda: bool) -> None:
    """Free what a timed mode left (memory, compiled graphs) before the next one."""
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    compiled.reset()  # the next mode (or process count) compiles afresh


def profile_one_step(step: Callable, sync: Callable, world: World, cuda: bool):
    """A torch profiler holding one step, preceded by a discarded profiled step and a barrier: starting the
    profiler the first time (CUPTI) takes each process a different time, and an NCCL kernel in that step
    waits for the later process — seconds that once read as "exposed communication". (A profiler schedule
    with a warm-up step would do the same, but its export after the run holds no events.)"""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]
    with torch_profile(activities=activities):
        step()
        sync()
    distributed.barrier(world)
    sync()
    with torch_profile(activities=activities) as prof:
        step()
        sync()
    return prof


def time_training_step(mode: str, cfg: ModelConfig, micro_batch: int, seq_len: int, total_batch: int,
                       steps: int, warmup: int, profile: bool = False, world: World = World(),
                       compile_mode: str | None = None) -> StepResult:
    """Median step time of `steps` steps after `warmup`; on several processes also the communication time of
    one more, profiled, step (bench/comm.py). profile: print a per-kernel profile of one more step.
    compile_mode: another torch.compile mode than the recipe's (the CUDA-graph fallback)."""
    cuda = bench_device().type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    step = None
    try:
        step = _Step(mode, cfg, micro_batch, seq_len, total_batch, world, compile_mode)
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        times, losses, norms = [], [], []
        with _sdpa_context(mode):
            for i in range(warmup + steps):
                sync()
                t0 = time.perf_counter()
                loss, norm = step()
                losses.append(loss.item())  # host sync: the step is complete on this process
                sync()
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
                norms.append(norm.item())
            comm = None
            if profile or world.distributed:
                prof = profile_one_step(step, sync, world, cuda)
                if world.distributed:
                    with tempfile.TemporaryDirectory() as tmp:
                        trace = Path(tmp) / "trace.json"
                        prof.export_chrome_trace(str(trace))
                        comm = comm_time_of_trace(trace)
                if profile and world.main:
                    print(f"## profile of one {mode} step (CUDA time per kernel)")
                    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30,
                                                    max_name_column_width=70))
        dt = statistics.median(times)
        peak = peak_flops(step.device)
        return StepResult(mode, micro_batch, dt * 1e3, total_batch / dt, step.flops / dt / 1e12,
                          step.flops / dt / (peak * world.size) if peak else None,
                          torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0, losses, world.size, comm,
                          norms)
    finally:
        del step
        release(cuda)


def fit_micro_batch(mode: str, cfg: ModelConfig, b: int, seq_len: int, total_batch: int, steps: int, warmup: int,
                    profile: bool, notes: list[str], compile_mode: str | None = None) -> StepResult:
    """Time one mode on this process alone, halving the micro-batch on out-of-memory."""
    while True:
        try:
            result = time_training_step(mode, cfg, b, seq_len, total_batch, steps, warmup, profile=profile,
                                        compile_mode=compile_mode)
            if mode in REFUSED:
                notes.append(f"# {mode}: ran without {', '.join(REFUSED[mode])} (the kernels could not fuse a "
                             "shape and fell back)")
            return result
        except torch.cuda.OutOfMemoryError:
            release(True)
            notes.append(f"# {mode}: micro-batch {b} ran out of memory, trying {b // 2}")
            b //= 2
            if b == 0:
                raise
