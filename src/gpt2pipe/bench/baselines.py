"""Timing the baselines the step table's ratios are against: a torch.compile mode with CUDA graphs
(compile-max), checked against an earlier mode's first step and timed without CUDA graphs where they fail or
disagree, and llm.c's train_gpt2cu (bench/llmc.py) on the same shape."""

from __future__ import annotations

import torch

from gpt2pipe.bench import compiled, llmc, step
from gpt2pipe.bench.step import StepResult
from gpt2pipe.config import ModelConfig
from gpt2pipe.device import peak_flops
from gpt2pipe.model.gpt import GPT

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
    probe = compiled.cudagraph_accumulation_problem(step.bench_device())
    if probe is not None:  # don't pay max-autotune's compile twice for what a tiny model already showed
        notes.append(f"# {mode}: CUDA graphs with gradient accumulation fail on a tiny model ({probe}); "
                     f"timed as {fallback}")
        r = step.fit_micro_batch(mode, cfg, b, seq_len, total_batch, steps, warmup, profile, notes, fallback)
        r.note = f"{fallback} (CUDA graphs fail with accumulation)"
        return [r]
    skips = compiled.cudagraph_skips()
    try:
        r = step.fit_micro_batch(mode, cfg, b, seq_len, total_batch, steps, warmup, profile, notes)
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as e:  # noqa: BLE001 — whatever CUDA graphs raise, the fallback is the answer
        step.release(torch.cuda.is_available())  # raises first if the failure took the CUDA context (run() says so)
        notes.append(f"# {mode}: mode={recipe.mode} failed ({compiled.error_line(e)}); timed as {fallback}")
        r = step.fit_micro_batch(mode, cfg, b, seq_len, total_batch, steps, warmup, profile, notes, fallback)
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
    again = step.fit_micro_batch(mode, cfg, r.micro_batch, seq_len, total_batch, steps, warmup, profile, notes,
                                 fallback)
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
    peak = peak_flops(step.bench_device())
    return StepResult("llmc", b, ms, total_batch / dt, flops / dt / 1e12, flops / dt / peak if peak else None,
                      parsed.memory_mib / 1024 if parsed.memory_mib is not None else float("nan"),
                      parsed.losses, norms=parsed.norms, note="llm.c train_gpt2cu " + " ".join(extra))
