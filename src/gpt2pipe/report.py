"""Stage 5 helpers: read llm.c-format logs and eval results, and draw the loss/HellaSwag figure (with an rl
section, a row of RL panels under it: report_rl.py).

The papermill notebook (gpt2pipe/notebooks/report.ipynb, shipped in the package) calls these, so the
plotting is unit-tested.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from gpt2pipe import Gpt2pipeError, report_rl  # noqa: E402
from gpt2pipe.files import atomic_path  # noqa: E402

# OpenAI GPT-2 val loss on FineWeb as llm.c measures it, and HellaSwag acc_norm (llm.c's dev/vislog.ipynb)
GPT2_VAL_LOSS = {"124M": 3.424958, "350M": 3.083089, "774M": 3.000580, "1558M": 2.831273}
GPT2_HELLASWAG = {"124M": 0.294463, "350M": 0.375224, "774M": 0.431986, "1558M": 0.488946}
GPT3_HELLASWAG = {"124M": 0.337, "350M": 0.436, "774M": 0.510, "1558M": 0.547}
GPT3_NAME = {"124M": "125M", "350M": "350M", "774M": "760M", "1558M": "1.3B"}  # the GPT-3 model of that size
CHANCE = 0.25  # four endings


def binomial_interval(acc: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (95% by default) of an accuracy measured on n examples."""
    if n <= 0:
        return 0.0, 1.0
    centre = (acc + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(acc * (1 - acc) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


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


def write_metrics(evals: list[dict], tokens_per_step: int, path: str | Path, rl: dict | None = None) -> None:
    """metrics.tsv; with RL results (report_rl.load) a `stage` column, the RL columns and the rl rows after the
    train ones (without, the table is as it always was)."""
    import csv

    rows = metrics_rows(evals, tokens_per_step)
    if rl is not None:
        rows = ([{"stage": "train", **r, **dict.fromkeys(report_rl.RL_COLUMNS)} for r in rows]
                + report_rl.metrics_rows(rl))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["step"], delimiter="\t")
        w.writeheader()
        w.writerows(rows)


def resolve_baseline(cfg) -> str | None:
    """report.baseline: auto draws the baselines of the model's GPT-2 size, and none for a model of no GPT-2
    size (such as the demo's): a 124M line would only stretch the axes of a model it says nothing about."""
    from gpt2pipe.model.gpt import gpt2_size_name

    if cfg.report.baseline == "auto":
        return gpt2_size_name(cfg.model)
    return None if cfg.report.baseline == "none" else cfg.report.baseline


def compared_runs(cfg) -> list[dict]:
    """report.compare_runs: each other run under results_dir, with its train.log, resolved config.yaml and
    eval results; `exists` is False while it has no log or config yet (not trained through the workflow)."""
    from gpt2pipe import layout

    return layout.runs_named(cfg.results_dir, cfg.report.compare_runs)


def load_compared(runs: list[dict]) -> list[dict]:
    """The runs that exist, each with its tokens per step (from its own resolved config) and eval results."""
    from gpt2pipe import config

    out = []
    for r in runs:
        if r["exists"]:
            tokens = config.load(r["config"]).train.total_batch_tokens
            out.append({**r, "tokens_per_step": tokens, "evals": load_evals(r["evals"])})
    return out


def val_points(log: dict, evals: list[dict]) -> list[tuple[int, float]]:
    """Val losses by step: those logged during training and the evaluated checkpoints' (the same measure;
    a checkpoint's wins where both exist)."""
    val = dict(log.get("tel", []))
    val.update((r["step"], r["val_loss"]) for r in evals if r.get("val_loss") is not None)
    return sorted(val.items())


def tokens_to_reach(points: list[tuple[int, float]], tokens_per_step: int, target: float) -> int | None:
    """Tokens seen when a val loss first reaches target (None: never)."""
    return next((s * tokens_per_step for s, v in sorted(points) if v <= target), None)


def comparison_lines(name: str, log: dict, evals: list[dict], tokens_per_step: int, compared: list[dict]) -> list[str]:
    """One line per compared run: its final val loss, and when this run reached it."""
    mine = val_points(log, evals)
    lines = []
    for r in compared:
        theirs = val_points(parse_log(r["log"]), r["evals"])
        if not theirs or not mine:
            lines.append(f"{r['name']}: no val loss to compare yet")
            continue
        step, final = max(theirs)
        total = step * r["tokens_per_step"]
        reached = tokens_to_reach(mine, tokens_per_step, final)
        share = f" ({reached / total:.1%} of theirs)" if reached is not None and total else ""
        when = (f"{name} reaches it at {reached:,} tokens{share}" if reached is not None
                else f"{name} has not reached it (best {min(v for _, v in mine):.4f} at "
                     f"{max(mine)[0] * tokens_per_step:,} tokens)")
        lines.append(f"{r['name']}: final val loss {final:.4f} at {total:,} tokens; {when}")
    return lines


COMPARE_COLORS = ["tab:purple", "tab:orange", "tab:brown", "tab:olive", "tab:cyan", "tab:pink"]


def plot(train_log: str | Path, evals: list[dict], out_png: str | Path, *, tokens_per_step: int,
         baseline: str | None = None, reference_log: str | Path | None = None,
         reference_tokens_per_step: int = 524288, log_scale: bool = False, title: str = "",
         compare: list[dict] = (), name: str = "", fineweb: bool = True, rl: dict | None = None) -> plt.Figure:
    """Two panels against tokens seen: train/val loss, and HellaSwag acc_norm; baselines as lines (GPT-2's val
    loss only with `fineweb`: llm.c measured it on FineWeb's val split, and on other text it means nothing).
    compare: other runs (load_compared) drawn on the same axes, each at its own tokens per step.
    rl: RL results (report_rl.load), drawn as a second row of three panels (report_rl.draw)."""
    run = parse_log(train_log)
    ref = parse_log(reference_log) if reference_log else {}
    others = [(r, parse_log(r["log"]), COMPARE_COLORS[i % len(COMPARE_COLORS)]) for i, r in enumerate(compare)]
    if rl is None:
        fig, (ax_loss, ax_hs) = plt.subplots(1, 2, figsize=(14, 5))
    else:  # one figure still (results/output.png is the run's one picture): pre-training above, RL below
        fig = plt.figure(figsize=(14, 10))
        grid = fig.add_gridspec(2, 6)
        ax_loss, ax_hs = fig.add_subplot(grid[0, :3]), fig.add_subplot(grid[0, 3:])
        report_rl.draw([fig.add_subplot(grid[1, 2 * i : 2 * i + 2]) for i in range(3)], rl)
    last_tokens = max([s * tokens_per_step for pts in run.values() for s, _ in pts]
                      + [s * reference_tokens_per_step for pts in ref.values() for s, _ in pts]
                      + [s * r["tokens_per_step"] for r, log, _ in others for pts in log.values() for s, _ in pts]
                      + [1])
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
    for r, log, color in others:  # under this run's curves; each in its own colour, named
        tps = r["tokens_per_step"]
        if log.get("trl"):
            ax_loss.plot(xs(log["trl"], tps), ys(log["trl"]), color=color, lw=1, alpha=0.4, label=f"{r['name']} train loss")
        val = val_points(log, r["evals"])
        if val:
            ax_loss.plot(xs(val, tps), ys(val), "s-", color=color, ms=3, lw=1, label=f"{r['name']} val loss")
        hs = [e for e in r["evals"] if e.get("hellaswag_acc_norm") is not None]
        if hs:
            ax_hs.plot(xs([(e["step"], 0) for e in hs], tps), [e["hellaswag_acc_norm"] for e in hs], "s-",
                       color=color, ms=3, lw=1, label=f"{r['name']} HellaSwag acc_norm")
    prefix = f"{name} " if others and name else ""
    if run.get("trl"):
        ax_loss.plot(xs(run["trl"], tokens_per_step), ys(run["trl"]), color="tab:blue", lw=1,
                     label=f"{prefix}train loss")
    if run.get("tel"):
        ax_loss.plot(xs(run["tel"], tokens_per_step), ys(run["tel"]), "-", color="tab:red", lw=1, alpha=0.5,
                     label=f"{prefix}val loss (during training)")
    val = [(r["step"], r["val_loss"]) for r in evals if r.get("val_loss") is not None]
    if val:
        ax_loss.plot(xs(val, tokens_per_step), ys(val), "o", color="tab:red", ms=5,
                     label=f"{prefix}val loss (checkpoints)")
    hs = [r for r in evals if r.get("hellaswag_acc_norm") is not None]
    bottom, top = 0.2, CHANCE
    if hs:  # each point with its binomial 95% interval: 200 examples measure acc_norm to about +-0.06
        acc = [r["hellaswag_acc_norm"] for r in hs]
        lo, hi = zip(*(binomial_interval(a, r.get("hellaswag_examples", 0)) for a, r in zip(acc, hs)))
        ax_hs.errorbar(xs([(r["step"], 0) for r in hs], tokens_per_step), acc,
                       yerr=[[a - l for a, l in zip(acc, lo)], [h - a for a, h in zip(acc, hi)]],
                       fmt="o-", color="tab:green", ms=4, capsize=3, label=f"{prefix}HellaSwag acc_norm (95% CI)")
        bottom, top = min(bottom, min(lo) - 0.01), max(top, *hi)
    for r, _, _ in others:
        accs = [e["hellaswag_acc_norm"] for e in r["evals"] if e.get("hellaswag_acc_norm") is not None]
        if accs:
            bottom, top = min(bottom, min(accs) - 0.01), max(top, *accs)
    if ref.get("eval"):
        top = max(top, *ys(ref["eval"]))
    if baseline:
        gpt3 = GPT3_NAME[baseline]
        if fineweb:
            ax_loss.axhline(GPT2_VAL_LOSS[baseline], color="tab:red", ls=":",
                            label=f"OpenAI GPT-2 {baseline} val (FineWeb)")
        ax_hs.axhline(GPT2_HELLASWAG[baseline], color="tab:red", ls=":", label=f"OpenAI GPT-2 {baseline}")
        ax_hs.axhline(GPT3_HELLASWAG[baseline], color="tab:green", ls=":", label=f"OpenAI GPT-3 {gpt3}")
        top = max(top, GPT3_HELLASWAG[baseline])
    ax_hs.axhline(CHANCE, color="black", lw=0.8, ls="--", label="chance (0.25)")
    # a fixed scale from below chance to above the best line: noise on a few hundred rows is not a trend
    ax_hs.set_ylim(bottom, max(0.4, top + 0.02))
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
        configfile=None, overrides=(), rl_log=None, rl_evaluated=None, rl_samples=None) -> Path:
    """`gpt2pipe report`: execute the report notebook with papermill (it draws the PNG and shows it) and
    write metrics.tsv. The notebook defaults to the one shipped in the package, so this works anywhere.
    With an rl section, and its rl.log (rl_log, default <run>/rl/rl.log): the RL panels and table, the evaluate
    results of the model RL started from and of its final policy (rl_evaluated, default the workflow's), and
    rl_samples.md (rl_samples, default beside the PNG)."""
    import papermill

    from gpt2pipe.layout import report_notebook

    out = Path(out or cfg.run_dir / "output.png")
    notebook_out = Path(notebook_out or out.with_name("report.ipynb"))
    metrics = Path(metrics or out.with_name("metrics.tsv"))
    if notebook is None or (str(notebook) == _OLD_CLI_DEFAULT and not Path(notebook).is_file()):
        notebook = report_notebook()
    evals = [str(p) for p in (evals or sorted((cfg.run_dir / "eval").glob("step_*.json")))]
    train_log = Path(train_log or cfg.run_dir / "train" / "train.log")
    if not evals:
        raise Gpt2pipeError(f"no eval results given and none in {cfg.run_dir / 'eval'} (run the evaluate stage)")
    rl_inputs = report_rl.inputs(cfg, rl_log, rl_evaluated)
    for p in [notebook, train_log, *evals, *([rl_inputs[0], *filter(None, rl_inputs[1])] if rl_inputs else [])]:
        if not Path(p).is_file():
            raise Gpt2pipeError(f"{p}: not found")
    rl_samples = Path(rl_samples or out.with_name("rl_samples.md")) if rl_inputs else None
    for p in (out, notebook_out, metrics, *([rl_samples] if rl_samples else [])):
        p.parent.mkdir(parents=True, exist_ok=True)
    params = {
        "train_log": str(train_log),
        "eval_files": evals,
        "output_png": str(out),
        "config_file": str(configfile) if configfile else "",
        "overrides": list(overrides),
    }
    if rl_inputs:  # only then: without RL the notebook is executed exactly as before
        params.update(rl_log=rl_inputs[0], rl_evaluated=rl_inputs[1])
    try:
        papermill.execute_notebook(str(notebook), str(notebook_out), parameters=params, progress_bar=False,
                                   cwd=str(Path.cwd()))
    except papermill.PapermillExecutionError as e:  # the failing cell's error, not papermill's traceback
        raise Gpt2pipeError(f"report notebook failed in cell {e.exec_count}: {e.ename}: {e.evalue} "
                            f"(executed notebook: {notebook_out})") from None
    rl = report_rl.load(*rl_inputs, cfg.rl) if rl_inputs else None
    write_metrics(load_evals(evals), cfg.train.total_batch_tokens, metrics, rl)
    if rl is not None:
        report_rl.write_samples(rl, rl_samples)
    print(f"report: {out} (notebook: {notebook_out}, metrics: {metrics}"
          + (f", RL samples: {rl_samples})" if rl is not None else ")"))
    return out


# the CLI's --notebook default before the notebook moved into the package (a repo-relative path)
_OLD_CLI_DEFAULT = "workflow/notebooks/report.ipynb"
