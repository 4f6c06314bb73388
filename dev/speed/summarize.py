"""$OUT/summary.md of dev/speed/speed_table.sh: the bench's modes (bench.md, bench_diag.md) and the training
loops' median step (train_*.log step lines, the first --skip dropped: allocation, cuDNN plans) in one table,
every row against the fastest baseline (nanogpt, compile*, llmc) measured in this run.

    python dev/speed/summarize.py OUT [--skip 3]
"""

from __future__ import annotations

import argparse
import re
import statistics
from pathlib import Path

STEP = re.compile(r"^step\s+(\d+)/\d+ \|.*\| (\d+) ms ([\d,]+) tok/s")
BASELINES = ("nanogpt", "compile", "llmc")


def bench_rows(path: Path) -> list[tuple[str, float, float]]:
    """(mode, ms/step, tokens/s) of a bench step table."""
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) >= 4 and re.fullmatch(r"[\d.]+", cells[2]) and cells[1].isdigit():
                rows.append((cells[0].replace(" (baseline)", ""), float(cells[2]), float(cells[3].replace(",", ""))))
    return rows


def step_times(path: Path, skip: int) -> list[float]:
    """Per-step ms from a train log's step lines, the first `skip` steps dropped."""
    if not path.is_file():
        return []
    return [float(m[2]) for m in map(STEP.match, path.read_text().splitlines()) if m and int(m[1]) > skip]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--skip", type=int, default=3)
    p.add_argument("--tokens", type=int, default=524288, help="tokens a training step (speed_table.sh's shape)")
    a = p.parse_args()
    rows = []  # (what, ms, tokens/s, detail)
    for name in ("bench.md", "bench_diag.md"):
        rows += [(f"bench {m}", ms, tps, name) for m, ms, tps in bench_rows(a.out / name)]
    # the fastest baseline of bench.md's process: bench_diag.md's runs in a process of its own, and two
    # processes on one card differ by a few percent (docs/benchmarks.md)
    loops = {}
    for log in sorted(a.out.glob("train_*.log")):
        t = step_times(log, a.skip)
        if t:
            ms = statistics.median(t)
            loops[log.stem[6:]] = ms
            rows.append((f"train {log.stem[6:]} (ops kernels)", ms, a.tokens / ms * 1e3,
                         f"median of {len(t)} steps ({min(t):.0f}-{max(t):.0f} ms)"))
    base = min((r for r in rows if r[3] == "bench.md" and r[0].split()[1].startswith(BASELINES)),
               key=lambda r: r[1], default=None)
    kern = next((r[1] for r in rows if r[0] == "bench kernels"), None)
    print("# Speed table (dev/speed/speed_table.sh)\n")
    if base:
        print(f"Ratio = fastest baseline's ms / row's ms (>1: faster); fastest baseline: {base[0]} {base[1]:.1f} ms.\n")
    print("| mode / loop | ms/step | tokens/s | vs fastest baseline | vs bench kernels | from |")
    print("|---|---:|---:|---:|---:|---|")
    for what, ms, tps, detail in rows:
        r = f"{base[1] / ms:.3f}x" if base else "-"
        k = f"{kern / ms:.3f}x" if kern else "-"
        print(f"| {what} | {ms:.1f} | {tps:,.0f} | {r} | {k} | {detail} |")
    if "gpt2" in loops and "speedrun" in loops:
        ratio = loops["speedrun"] / loops["gpt2"]
        print(f"\nspeedrun model / GPT-2 model in `gpt2pipe train`: {ratio:.3f}x the step time")
    prof = a.out / "profile.md"
    if prof.is_file():
        lines = [ln for ln in prof.read_text().splitlines()
                 if ln.startswith(("## ", "warm-up steps", "GPU busy", "| muon", "| optimizer", "| model", "| data"))]
        print("\nProfiled steps (profile.md):\n" + "\n".join(f"    {ln}" for ln in lines))


if __name__ == "__main__":
    main()
