"""`gpt2pipe bench`: one GPU, one process — a full GPT-2 training step several ways, then (bench/kernels.py)
each kernel alone.

Step table: our kernels (bf16, fp8, with recompute, with the classifier's weight gradient summed in bf16)
against the baselines — torch.compile the way users write it (bench/compiled.py: default and max-autotune,
plus diagnostic variants) and llm.c's train_gpt2cu (bench/llmc.py, with --llmc) — and torch eager, each timed
by bench/step.py (bench/baselines.py for the baselines' own checks). Ratios are against the fastest baseline
measured in the same run. Several processes: bench/scaling.py.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable

import torch

from gpt2pipe import Gpt2pipeError
from gpt2pipe.bench import baselines, compiled, step
from gpt2pipe.bench.kernels import format_table, kernel_table
from gpt2pipe.bench.modes import DEFAULT_MODES, is_baseline, micro_batch_for
from gpt2pipe.bench.step import StepResult
from gpt2pipe.model.gpt import GPT2_SIZES


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
                step.release(True)
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
                    results.append(baselines.time_llmc(llmc_binary, size, cfg, b, seq_len, total_batch, steps,
                                                       warmup, list(llmc_args), notes))
                elif mode in compiled.RECIPES and compiled.RECIPES[mode].cudagraphs:
                    reference = next((r for m in baselines.REFERENCE_MODES for r in results
                                      if r.mode == m and r.trusted), None)
                    results += baselines.time_compile_cudagraphs(mode, cfg, b, seq_len, total_batch, steps, warmup,
                                                                 mode in profile, notes, reference)
                else:
                    results.append(step.fit_micro_batch(mode, cfg, b, seq_len, total_batch, steps, warmup,
                                                        mode in profile, notes))
            except Exception as e:  # noqa: BLE001 — one GPU call must still report the modes that worked
                traceback.print_exc()
                notes.append(f"# {mode} FAILED: {type(e).__name__}: " + str(e).strip().replace("\n", "\n#   "))
                try:
                    step.release(torch.cuda.is_available())
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
    lines = [f"# gpt2pipe bench on {step.device_name()}, torch {torch.__version__}, GPT-2 {size}, T={seq_len}, "
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
