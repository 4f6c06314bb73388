#!/usr/bin/env python3
"""Compare our val-loss curve with llm.c's (issue 12): a markdown table and a PASS/FAIL verdict.

Both logs are llm.c-format text logs (`s:STEP tel:VAL` lines): llm.c's `main.log` (written by
`train_gpt2cu -o DIR`) and ours (`<run-dir>/train/train.log`, or `train_state/train.log` of an
unfinished run). Issue 12's criteria, against the first llm.c log:
  - |ours - llm.c| <= 0.05 at every evaluation from step 50 on, and
  - ours <= llm.c + 0.03 at the final evaluation (llm.c's last val step).
More llm.c logs (`--llmc-seeds`: the same run with other train-loader shuffle seeds) add llm.c's own
spread per step and the same tests against llm.c's mean across all its logs, for information: with
one 65,536-token window per step and 150 steps, data order alone moves llm.c's val loss by more than
the tolerances on small corpora.

    python dev/compare_llmc.py .llmc/reference/techdocs/llmc_seed42.log runs/ours/train/train.log \\
        --llmc-seeds .llmc/reference/techdocs/llmc_seed4[3-6].log

Exit status: 0 on PASS, 1 on FAIL, 2 on unreadable input. Standard library only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path


def val_curve(path: Path) -> dict[int, float]:
    """{step: val loss} from an llm.c-format log; a step logged twice (a resumed run) keeps the last."""
    curve: dict[int, float] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if len(parts) < 2 or not parts[0].startswith("s:") or not parts[1].startswith("tel:"):
            continue
        try:
            curve[int(parts[0][2:])] = float(parts[1][4:])
        except ValueError:
            raise SystemExit(f"{path}:{lineno}: not an llm.c val line: {line!r}") from None
    if not curve:
        raise SystemExit(f"{path}: no `s:STEP tel:VAL` lines")
    return curve


def verdict(ref: dict[int, float], ours: dict[int, float], from_step: int, tol: float,
            final_tol: float) -> tuple[bool, list[str]]:
    """Issue 12's two tests of `ours` against `ref`; (passed, one line per test)."""
    steps = [s for s in sorted(ref) if s >= from_step]
    final = max(ref)
    missing = [s for s in steps if s not in ours]
    lines = []
    if missing:
        lines.append(f"- FAIL: ours has no val loss at step(s) {', '.join(map(str, missing))}")
    diffs = {s: ours[s] - ref[s] for s in steps if s in ours}
    worst = max(diffs, key=lambda s: abs(diffs[s]), default=None)
    every_ok = not missing and all(abs(d) <= tol + 1e-9 for d in diffs.values())
    if worst is not None:
        lines.append(f"- {'PASS' if every_ok else 'FAIL'}: |ours - ref| <= {tol} at every eval from step {from_step} "
                     f"(largest {diffs[worst]:+.4f} at step {worst})")
    final_ok = final in ours and ours[final] <= ref[final] + final_tol + 1e-9
    if final in ours:
        lines.append(f"- {'PASS' if final_ok else 'FAIL'}: final (step {final}) ours {ours[final]:.4f} <= "
                     f"ref {ref[final]:.4f} + {final_tol} (difference {ours[final] - ref[final]:+.4f})")
    return every_ok and final_ok, lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("llmc_log", type=Path, help="llm.c's main.log (the reference run)")
    p.add_argument("ours_log", type=Path, help="our train.log")
    p.add_argument("--llmc-seeds", type=Path, nargs="*", default=[],
                   help="more llm.c logs of the same run with other data-order seeds (information)")
    p.add_argument("--from-step", type=int, default=50, help="first step the tolerance applies to (default 50)")
    p.add_argument("--tol", type=float, default=0.05, help="allowed |ours - llm.c| per eval (default 0.05)")
    p.add_argument("--final-tol", type=float, default=0.03, help="allowed ours - llm.c at the end (default 0.03)")
    args = p.parse_args(argv)
    try:
        ref, ours = val_curve(args.llmc_log), val_curve(args.ours_log)
        seeds = [val_curve(f) for f in args.llmc_seeds]
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    steps = sorted(set(ref) | set(ours))
    runs = [ref, *seeds]
    head = "| step | llm.c | ours | ours − llm.c |"
    rule = "|---:|---:|---:|---:|"
    if seeds:
        head += f" llm.c min–max ({len(runs)} seeds) | llm.c mean | ours − mean |"
        rule += "---:|---:|---:|"
    print(f"llm.c: `{args.llmc_log}`  \nours: `{args.ours_log}`\n")
    print(head)
    print(rule)
    fmt = lambda x: "—" if x is None else f"{x:.4f}"  # noqa: E731
    means: dict[int, float] = {}
    for s in steps:
        r, o = ref.get(s), ours.get(s)
        row = f"| {s} | {fmt(r)} | {fmt(o)} | {'—' if r is None or o is None else f'{o - r:+.4f}'} |"
        if seeds:
            vals = [run[s] for run in runs if s in run]
            if len(vals) == len(runs):
                means[s] = statistics.fmean(vals)
                row += (f" {min(vals):.4f}–{max(vals):.4f} | {means[s]:.4f} |"
                        f" {'—' if o is None else f'{o - means[s]:+.4f}'} |")
            else:
                row += " — | — | — |"
        print(row)

    passed, lines = verdict(ref, ours, args.from_step, args.tol, args.final_tol)
    print(f"\n**Issue 12 criteria against llm.c (`{args.llmc_log.name}`): {'PASS' if passed else 'FAIL'}**\n")
    print("\n".join(lines))
    if seeds:
        spread = {s: max(run[s] for run in runs) - min(run[s] for run in runs)
                  for s in means if s >= args.from_step}
        worst = max(spread, key=spread.get)
        print(f"\nllm.c's own spread over {len(runs)} data-order seeds, from step {args.from_step}: up to "
              f"{spread[worst]:.4f} (step {worst}); at the final step {spread[max(spread)]:.4f}.")
        mean_passed, mean_lines = verdict(means, ours, args.from_step, args.tol, args.final_tol)
        print(f"\nThe same criteria against llm.c's mean over its {len(runs)} seeds (information): "
              f"{'PASS' if mean_passed else 'FAIL'}\n")
        print("\n".join(mean_lines))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
