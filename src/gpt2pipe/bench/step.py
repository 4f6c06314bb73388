"""`gpt2pipe bench`: one GPU, one process — a full GPT-2 training step several ways, then (bench/kernels.py)
each kernel alone.

Step table: our kernels (bf16, fp8, with recompute, with the classifier's weight gradient summed in bf16)
against the baselines — torch.compile the way users write it (bench/compiled.py: default and max-autotune,
plus diagnostic variants) and llm.c's train_gpt2cu (bench/llmc.py, with --llmc) — and torch eager. Every
mode does the same optimizer step of `total_batch` tokens by gradient accumulation over micro-batches,
from the same initial weights over the same tokens, so their first losses and gradient norms agree; ratios
are against the fastest baseline measured in the same run. MFU is per GPU. Synthetic tokens: the data
pipeline is not what is timed. The same step runs as one of several processes (bench/scaling.py): each
takes its share of the micro-batches, with the gradient communication the training loop uses.
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gpt2pipe import Gpt2pipeError, distributed
from gpt2pipe.bench import compiled, llmc
from gpt2pipe.bench.comm import CommTime, comm_time_of_trace
from gpt2pipe.bench.kernels import format_table, kernel_table
from gpt2pipe.config import ModelConfig
from gpt2pipe.device import peak_flops, sdpa_fastest_first
from gpt2pipe.distributed import World
from gpt2pipe.model.gpt import GPT, GPT2_SIZES

KERNEL_MODES = ("kernels", "kernels-fp8", "kernels-fp8-qkv", "kernels-fp8-head", "kernels-recompute",
                "kernels-dw-bf16", "kernels-unfused")
# the GEMMs each fp8 mode runs in fp8: kernels-fp8 is what train.fp8 runs by default (train.fp8_gemms)
FP8_MODES = {"kernels-fp8": ("mlp",), "kernels-fp8-qkv": ("mlp", "qkv"), "kernels-fp8-head": ("mlp", "head")}
MODES = (*KERNEL_MODES, "eager", *compiled.RECIPES)  # what --modes takes (and "llmc" with --llmc)
# compile-max last: it takes longest, and its CUDA-graph check compares it with compile (run before it)
DEFAULT_MODES = ("kernels", "kernels-fp8", "kernels-fp8-head", "kernels-unfused", "compile", "compile-max")
# micro-batch per size and mode family (kernels*, eager, compile*, llmc): what fits 80 GB with room to spare
# (a compiled mode that runs out of memory is recompiled at half the size, which costs minutes)
MICRO_BATCH = {
    "124M": {"kernels": 64, "kernels-recompute": 128, "eager": 32, "compile": 64, "llmc": 64},
    "350M": {"kernels": 64, "kernels-recompute": 128, "eager": 16, "compile": 32, "llmc": 64},
    "774M": {"kernels": 32, "kernels-recompute": 64, "eager": 8, "compile": 16, "llmc": 32},
    "1558M": {"kernels": 16, "kernels-recompute": 32, "eager": 4, "compile": 8, "llmc": 16},
}


def micro_batch_for(size: str, mode: str) -> int:
    """The default micro-batch of a mode at a GPT-2 size (other sizes: 124M's)."""
    table = MICRO_BATCH.get(size, MICRO_BATCH["124M"])
    family = mode if mode in table else "compile" if mode.startswith("compile") else "kernels"
    return table[family]


DEFAULT_MICRO_BATCH = {mode: micro_batch_for("124M", mode) for mode in MODES}  # bench/scaling.py's defaults


def is_baseline(mode: str) -> bool:
    return mode.startswith("compile") or mode == "llmc"


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


@contextlib.contextmanager
def kernel_switches(mode: str):
    """The kernels path as `mode` times it: the fused classifier's weight gradient summed in fp32 (bf16 in
    kernels-dw-bf16), and the GELU epilogue and packed-qkv fusions on (off in kernels-unfused, the step as
    it was before them)."""
    from gpt2pipe.ops import FUSIONS
    from gpt2pipe.ops.classifier import FusedClassifier

    old = FusedClassifier.dw_fp32, dict(FUSIONS)
    FusedClassifier.dw_fp32 = mode != "kernels-dw-bf16"
    if mode == "kernels-unfused":
        FUSIONS.update(dict.fromkeys(FUSIONS, False))
    try:
        yield
    finally:
        FusedClassifier.dw_fp32 = old[0]
        FUSIONS.update(old[1])


class _Step:
    """One optimizer step of `total_batch` tokens on this process's share of the micro-batches: our flat
    ZeRO-1 AdamW on the kernels paths, torch's fused AdamW under DDP (bucketed all-reduce, synchronised only
    on the last micro-batch) on the torch paths — what the training loop uses for each."""

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
        self.kernels = mode in KERNEL_MODES
        model = GPT(cfg, ops="kernels" if self.kernels else "torch", recompute=mode == "kernels-recompute")
        model = model.to(self.device)
        if mode in FP8_MODES:
            from gpt2pipe.ops.fp8 import convert_to_fp8

            convert_to_fp8(model, FP8_MODES[mode])
        self.model = model
        self.opt = make_flat_optimizer(model, self.t, world) if self.kernels else make_optimizer(model, self.t,
                                                                                                  self.device)
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
        if recipe is not None:
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
        self.flops = model.flops_per_token(seq_len) * total_batch

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
            norm = optimizer_step(self.opt, self.t.learning_rate)
        return distributed.mean(total / self.accum, self.world), norm


def _release(cuda: bool) -> None:
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
        _release(cuda)


def fit_micro_batch(mode: str, cfg: ModelConfig, b: int, seq_len: int, total_batch: int, steps: int, warmup: int,
                    profile: bool, notes: list[str], compile_mode: str | None = None) -> StepResult:
    """Time one mode on this process alone, halving the micro-batch on out-of-memory."""
    while True:
        try:
            return time_training_step(mode, cfg, b, seq_len, total_batch, steps, warmup, profile=profile,
                                      compile_mode=compile_mode)
        except torch.cuda.OutOfMemoryError:
            _release(True)
            notes.append(f"# {mode}: micro-batch {b} ran out of memory, trying {b // 2}")
            b //= 2
            if b == 0:
                raise


# modes with compile-max's loss whose first step it is checked against (the first of them that ran)
REFERENCE_MODES = ("compile", "compile-cudnn", "compile-max-nocg", "compile-sliced", "compile-model",
                   "compile-model-drop", "eager")


def check_against(r: StepResult, reference: StepResult | None) -> str | None:
    """Why r's first step disagrees with a reference mode's (same weights, tokens and loss), or None. The
    first loss checks the forward; the first gradient norm the summed gradients (a CUDA graph that replays
    into a gradient buffer still in use shows here); the second loss the update."""
    if reference is None:
        return None
    checks = [("step-1 loss", r.losses[0], reference.losses[0], 2e-3),
              ("step-1 gradient norm", r.norms[0], reference.norms[0], 2e-2)]
    if len(r.losses) > 1 and len(reference.losses) > 1:
        checks.append(("step-2 loss", r.losses[1], reference.losses[1], 5e-3))
    for what, ours, ref, tol in checks:
        if not abs(ours - ref) <= tol * abs(ref):
            return f"{what} {ours:.5g} vs {ref:.5g} in {reference.mode}"
    return None


def time_compile_cudagraphs(mode: str, cfg: ModelConfig, b: int, seq_len: int, total_batch: int, steps: int,
                            warmup: int, profile: bool, notes: list[str],
                            reference: StepResult | None) -> list[StepResult]:
    """A compile mode that uses CUDA graphs (compile-max): timed as is if CUDA graphs pass the tiny-model
    probe, it runs, and its first step agrees with `reference`; else (flagged, where it ran) timed without
    CUDA graphs."""
    recipe = compiled.RECIPES[mode]
    fallback = compiled.CUDAGRAPH_FALLBACK
    probe = compiled.cudagraph_accumulation_problem(bench_device())
    if probe is not None:  # don't pay max-autotune's compile twice for what a tiny model already showed
        notes.append(f"# {mode}: CUDA graphs with gradient accumulation fail on a tiny model ({probe}); "
                     f"timed as {fallback}")
        r = fit_micro_batch(mode, cfg, b, seq_len, total_batch, steps, warmup, profile, notes, fallback)
        r.note = f"{fallback} (CUDA graphs fail with accumulation)"
        return [r]
    skips = compiled.cudagraph_skips()
    try:
        r = fit_micro_batch(mode, cfg, b, seq_len, total_batch, steps, warmup, profile, notes)
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as e:  # noqa: BLE001 — whatever CUDA graphs raise, the fallback is the answer
        _release(torch.cuda.is_available())  # raises first if the failure took the CUDA context (run() says so)
        notes.append(f"# {mode}: mode={recipe.mode} failed ({compiled.error_line(e)}); timed as {fallback}")
        r = fit_micro_batch(mode, cfg, b, seq_len, total_batch, steps, warmup, profile, notes, fallback)
        r.note = f"{fallback} (CUDA graphs failed)"
        return [r]
    problem = check_against(r, reference)
    if problem is None:
        skipped = compiled.cudagraph_skips() - skips
        r.note = f"mode={recipe.mode}"
        if skipped:
            r.note += f", inductor skipped CUDA graphs {skipped}x (see the log)"
        if reference is None:
            r.note += " (unchecked: no compile run before it)"
        return [r]
    r.note, r.trusted = f"WRONG with CUDA graphs: {problem}", False
    notes.append(f"# {mode}: with CUDA graphs its first step disagrees ({problem}); timed again as {fallback}")
    again = fit_micro_batch(mode, cfg, r.micro_batch, seq_len, total_batch, steps, warmup, profile, notes, fallback)
    again.note = fallback
    return [r, again]


def time_llmc(binary: str, size: str, cfg: ModelConfig, b: int, seq_len: int, total_batch: int, steps: int,
              warmup: int, extra: list[str], notes: list[str]) -> StepResult:
    """llm.c's train_gpt2cu on the same shape (bench/llmc.py), halving B when it runs out of memory."""
    with torch.device("meta"):
        flops = GPT(cfg).flops_per_token(seq_len) * total_batch  # our count, so MFU compares like for like
    while True:
        try:
            parsed, _ = llmc.run(binary, size, b, seq_len, total_batch, steps, warmup, cfg.vocab_size, extra)
            break
        except llmc.LlmcFailed as e:
            if not e.out_of_memory or b == 1:
                raise
            notes.append(f"# llmc: micro-batch {b} ran out of memory, trying {b // 2}")
            b //= 2
    ms = llmc.median_ms(parsed, warmup)
    dt = ms / 1e3
    peak = peak_flops(bench_device())
    return StepResult("llmc", b, ms, total_batch / dt, flops / dt / 1e12, flops / dt / peak if peak else None,
                      parsed.memory_mib / 1024 if parsed.memory_mib is not None else float("nan"),
                      parsed.losses, norms=parsed.norms, note="llm.c train_gpt2cu " + " ".join(extra))


def parse_micro_batch(items: list[str]) -> dict[tuple[str | None, str], int]:
    """--micro-batch MODE=B (every size) or SIZE:MODE=B, e.g. `compile=32 350M:kernels=32`."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        size, colon, mode = key.rpartition(":")
        if not sep or not value.isdigit() or int(value) < 1 or (colon and not size):
            raise Gpt2pipeError(f"--micro-batch {item}: expected MODE=B or SIZE:MODE=B, e.g. kernels=32")
        if mode not in (*MODES, "llmc"):  # a typo would otherwise be ignored after minutes of GPU time
            raise Gpt2pipeError(f"--micro-batch {item}: unknown mode {mode!r}; choose from {', '.join((*MODES, 'llmc'))}")
        if size and size not in GPT2_SIZES:
            raise Gpt2pipeError(f"--micro-batch {item}: unknown size {size!r}; choose from {', '.join(GPT2_SIZES)}")
        out[(size or None, mode)] = int(value)
    return out


def run(sizes: tuple[str, ...] = ("124M",), seq_len: int = 1024, total_batch: int = 524288,
        modes: tuple[str, ...] = DEFAULT_MODES, micro_batch: dict | None = None, steps: int = 5, warmup: int = 2,
        kernels: bool = True, profile: tuple[str, ...] = (), llmc_binary: str | None = None,
        llmc_args: tuple[str, ...] = (), on_partial: Callable[[str], None] | None = None) -> str:
    """The step table of each size (and the per-op table, on a GPU); on_partial(report so far) after every
    mode, so a run cut short keeps what it measured. micro_batch: {(size or None, mode): B}."""
    if isinstance(sizes, str):
        sizes = (sizes,)
    micro_batch = micro_batch or {}
    if "llmc" in modes and not llmc_binary:
        raise Gpt2pipeError("mode llmc needs --llmc PATH (a built llm.c train_gpt2cu)")
    if llmc_binary and "llmc" not in modes:  # before compile-max: a subprocess cannot hurt the modes after it
        at = modes.index("compile-max") if "compile-max" in modes else len(modes)
        modes = (*modes[:at], "llmc", *modes[at:])
    done: list[str] = []
    for size in sizes:
        cfg = GPT2_SIZES[size]
        results: list[StepResult] = []
        notes: list[str] = []
        table: list[str] = []  # the per-op table, made before the slow max-autotune modes

        def section() -> str:
            text = format_section(size, seq_len, total_batch, steps, warmup, results, notes)
            return text + ("\n\n" + "\n".join(table) if table else "")

        def partial() -> None:
            if on_partial is not None:
                on_partial("\n\n".join([*done, section()]))

        def per_op_table() -> None:
            if table or not (kernels and torch.cuda.is_available()):
                return
            try:
                table.extend(format_table(kernel_table(cfg)))
                _release(True)
            except Exception as e:  # noqa: BLE001 — the step table stands without it
                traceback.print_exc()
                notes.append(f"# per-op table FAILED: {type(e).__name__}: {e}")
            partial()

        for mode in modes:
            if mode.startswith("compile-max"):  # minutes of autotuning: keep the per-op table if they time out
                per_op_table()
            b = micro_batch.get((size, mode), micro_batch.get((None, mode), micro_batch_for(size, mode)))
            try:
                if mode == "llmc":
                    results.append(time_llmc(llmc_binary, size, cfg, b, seq_len, total_batch, steps, warmup,
                                             list(llmc_args), notes))
                elif mode in compiled.RECIPES and compiled.RECIPES[mode].cudagraphs:
                    reference = next((r for m in REFERENCE_MODES for r in results if r.mode == m and r.trusted),
                                     None)
                    results += time_compile_cudagraphs(mode, cfg, b, seq_len, total_batch, steps, warmup,
                                                       mode in profile, notes, reference)
                else:
                    results.append(fit_micro_batch(mode, cfg, b, seq_len, total_batch, steps, warmup,
                                                   mode in profile, notes))
            except Exception as e:  # noqa: BLE001 — one GPU call must still report the modes that worked
                traceback.print_exc()
                notes.append(f"# {mode} FAILED: {type(e).__name__}: " + str(e).strip().replace("\n", "\n#   "))
                try:
                    _release(torch.cuda.is_available())
                except Exception as lost:  # noqa: BLE001 — a sticky CUDA error (illegal address): nothing more runs
                    traceback.print_exc()
                    notes.append(f"# releasing its memory failed too ({compiled.error_line(lost)}): the CUDA "
                                 "context is lost; no later mode or size ran")
                    done.append(section())
                    if on_partial is not None:
                        on_partial("\n\n".join(done))
                    raise Gpt2pipeError(f"bench: {mode} left the CUDA context unusable ({type(e).__name__}); "
                                        "the modes before it are in the table") from None
                partial()
                continue
            r = results[-1]
            print(f"{size} {mode}: {r.ms:.1f} ms/step, {r.peak_gb:.1f} GiB, losses {[round(x, 4) for x in r.losses]}",
                  flush=True)
            partial()
        per_op_table()
        done.append(section())
        if on_partial is not None:
            on_partial("\n\n".join(done))
    return "\n\n".join(done)


def fastest_baseline(results: list[StepResult]) -> StepResult | None:
    candidates = [r for r in results if is_baseline(r.mode) and r.trusted]
    return min(candidates, key=lambda r: r.ms) if candidates else None


def format_section(size: str, seq_len: int, total_batch: int, steps: int, warmup: int, results: list[StepResult],
                   notes: list[str]) -> str:
    """One size's step table: every mode against the fastest baseline (compile*, llmc) of this run."""
    base = fastest_baseline(results)
    lines = [f"# gpt2pipe bench on {device_name()}, torch {torch.__version__}, GPT-2 {size}, T={seq_len}, "
             f"{total_batch:,} tokens/step, median of {steps} steps after {warmup} warm-up", *notes, ""]
    if base is not None:
        lines.append(f"Ratios against the fastest baseline measured here: {base.mode} ({base.ms:.1f} ms/step).")
        lines.append("")
    lines.append("| mode | micro-batch | ms/step | tokens/s | TFLOP/s | MFU (per GPU) | peak GiB | step-1 loss "
                 "| vs fastest baseline | note |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        ratio = f"{base.ms / r.ms:.3f}x" if base and r.trusted else "-"
        mfu = f"{100 * r.mfu:.1f}%" if r.mfu else "-"
        loss = f"{r.losses[0]:.4f}" if r.losses else "-"
        name = f"{r.mode} (baseline)" if is_baseline(r.mode) else r.mode
        lines.append(f"| {name} | {r.micro_batch} | {r.ms:.1f} | {r.tokens_per_s:,.0f} | {r.tflops:.1f} | {mfu} | "
                     f"{r.peak_gb:.1f} | {loss} | {ratio} | {r.note or compiled_note(r.mode)} |")
    by_mode = {r.mode: r for r in results if r.trusted}
    if "kernels" in by_mode and "kernels-dw-bf16" in by_mode:
        fp32, bf16 = by_mode["kernels"], by_mode["kernels-dw-bf16"]
        lines += ["", f"Classifier weight gradient summed in fp32 (kernels) instead of bf16 (kernels-dw-bf16): "
                      f"{fp32.ms - bf16.ms:+.1f} ms/step ({100 * (fp32.ms / bf16.ms - 1):+.2f}%), "
                      f"{fp32.peak_gb - bf16.peak_gb:+.2f} GiB."]
    if results:
        lines += ["", "Per-step losses and pre-clip gradient norms (same initial weights and tokens in every mode):"]
        for r in results:
            lines.append(f"- {r.mode}: losses {[round(x, 4) for x in r.losses]}, "
                         f"norms {[round(x, 4) for x in r.norms]}")
    return "\n".join(lines)


def compiled_note(mode: str) -> str:
    recipe = compiled.RECIPES.get(mode)
    return recipe.note if recipe else ""
