"""Stage 5 helpers: read llm.c-format logs and eval results, and draw the loss/HellaSwag figure.

The papermill notebook (workflow/notebooks/report.ipynb) calls these, so the plotting is unit-tested.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from gpt2pipe import Gpt2pipeError  # noqa: E402
from gpt2pipe.files import atomic_path  # noqa: E402

# OpenAI GPT-2 val loss on FineWeb as llm.c measures it, and HellaSwag acc_norm (llm.c's dev/vislog.ipynb)
GPT2_VAL_LOSS = {"124M": 3.424958, "350M": 3.083089, "774M": 3.000580, "1558M": 2.831273}
GPT2_HELLASWAG = {"124M": 0.294463, "350M": 0.375224, "774M": 0.431986, "1558M": 0.488946}
GPT3_HELLASWAG = {"124M": 0.337, "350M": 0.436, "774M": 0.510, "1558M": 0.547}


def parse_log(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """llm.c log lines `s:STEP trl:X ...`, `s:STEP tel:X`, `s:STEP eval:X` -> {'trl': [(step, x)], ...}."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    path = Path(path)
    if not path.is_file():
        raise Gpt2pipeError(f"{path}: log not found")
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts or not parts[0].startswith("s:"):
            continue
        try:
            step = int(parts[0][2:])
            key, value = parts[1].split(":", 1)
            series[key].append((step, float(value)))
        except (IndexError, ValueError):
            raise Gpt2pipeError(f"{path}:{lineno}: not an llm.c log line: {line!r}") from None
    return dict(series)


def load_evals(paths: list[str | Path]) -> list[dict]:
    return sorted((json.loads(Path(p).read_text()) for p in paths), key=lambda r: r["step"])


def metrics_rows(evals: list[dict], tokens_per_step: int) -> list[dict]:
    """One row per evaluated checkpoint: the table in the notebook and metrics.tsv."""
    return [{"step": r["step"], "tokens": r["step"] * tokens_per_step, "val_loss": r.get("val_loss"),
             "hellaswag_acc_norm": r.get("hellaswag_acc_norm"), "hellaswag_acc": r.get("hellaswag_acc")}
            for r in evals]


def write_metrics(evals: list[dict], tokens_per_step: int, path: str | Path) -> None:
    import csv

    rows = metrics_rows(evals, tokens_per_step)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["step"], delimiter="\t")
        w.writeheader()
        w.writerows(rows)


def plot(train_log: str | Path, evals: list[dict], out_png: str | Path, *, tokens_per_step: int,
         baseline: str | None = None, reference_log: str | Path | None = None,
         reference_tokens_per_step: int = 524288, log_scale: bool = False, title: str = "") -> plt.Figure:
    """Two panels against tokens seen: train/val loss, and HellaSwag acc_norm; baselines as lines."""
    run = parse_log(train_log)
    ref = parse_log(reference_log) if reference_log else {}
    fig, (ax_loss, ax_hs) = plt.subplots(1, 2, figsize=(14, 5))
    last_tokens = max([s * tokens_per_step for pts in run.values() for s, _ in pts]
                      + [s * reference_tokens_per_step for pts in ref.values() for s, _ in pts] + [1])
    scale, unit = (1e9, "B") if last_tokens > 5e8 else (1e6, "M")

    def xs(points, tps):
        return [s * tps / scale for s, _ in points]

    def ys(points):
        return [v for _, v in points]

    if ref:
        for key, ax, style in (("trl", ax_loss, "-"), ("tel", ax_loss, "--"), ("eval", ax_hs, "-")):
            if ref.get(key):
                ax.plot(xs(ref[key], reference_tokens_per_step), ys(ref[key]), style, color="tab:gray",
                        alpha=0.6, lw=1, label=f"reference {key}")
    if run.get("trl"):
        ax_loss.plot(xs(run["trl"], tokens_per_step), ys(run["trl"]), color="tab:blue", lw=1, label="train loss")
    if run.get("tel"):
        ax_loss.plot(xs(run["tel"], tokens_per_step), ys(run["tel"]), "-", color="tab:red", lw=1, alpha=0.5,
                     label="val loss (during training)")
    val = [(r["step"], r["val_loss"]) for r in evals if r.get("val_loss") is not None]
    if val:
        ax_loss.plot(xs(val, tokens_per_step), ys(val), "o", color="tab:red", ms=5, label="val loss (checkpoints)")
    hs = [(r["step"], r["hellaswag_acc_norm"]) for r in evals if r.get("hellaswag_acc_norm") is not None]
    if hs:
        ax_hs.plot(xs(hs, tokens_per_step), ys(hs), "o-", color="tab:green", ms=4, label="HellaSwag acc_norm")
    if baseline:
        ax_loss.axhline(GPT2_VAL_LOSS[baseline], color="tab:red", ls=":", label=f"OpenAI GPT-2 ({baseline}) val")
        ax_hs.axhline(GPT2_HELLASWAG[baseline], color="tab:red", ls=":", label=f"OpenAI GPT-2 ({baseline})")
        ax_hs.axhline(GPT3_HELLASWAG[baseline], color="tab:green", ls=":", label=f"OpenAI GPT-3 ({baseline})")
    ax_hs.axhline(0.25, color="black", lw=0.8, ls="--", label="chance")
    if log_scale:
        ax_loss.set_yscale("log")
    ax_loss.set(xlabel=f"tokens ({unit})", ylabel="loss", title="loss")
    ax_hs.set(xlabel=f"tokens ({unit})", ylabel="acc_norm", title="HellaSwag (completion style)")
    for ax in (ax_loss, ax_hs):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return fig


def run(cfg, evals=None, out=None, notebook=None, notebook_out=None, metrics=None, train_log=None,
        configfile=None, overrides=()) -> Path:
    """`gpt2pipe report`: execute the report notebook with papermill (it draws the PNG) and write metrics.tsv."""
    import papermill

    out = Path(out or cfg.run_dir / "output.png")
    notebook_out = Path(notebook_out or out.with_name("report.ipynb"))
    evals = [str(p) for p in (evals or sorted((cfg.run_dir / "eval").glob("step_*.json")))]
    for p in [notebook, *map(Path, evals)]:
        if not Path(p).is_file():
            raise Gpt2pipeError(f"{p}: not found")
    params = {
        "train_log": str(train_log or cfg.run_dir / "train" / "train.log"),
        "eval_files": evals,
        "output_png": str(out),
        "config_file": str(configfile) if configfile else "",
        "overrides": list(overrides),
    }
    papermill.execute_notebook(str(notebook), str(notebook_out), parameters=params, progress_bar=False,
                               cwd=str(Path.cwd()))
    metrics = Path(metrics or out.with_name("metrics.tsv"))
    write_metrics(load_evals(evals), cfg.train.total_batch_tokens, metrics)
    print(f"report: {out} (notebook: {notebook_out}, metrics: {metrics})")
    return out
