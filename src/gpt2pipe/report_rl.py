"""The report's RL part, drawn when the config has an rl section: from the RL stage's rl.log, its held-out
results (rl/eval_NNNNNN.json: reward and KL with 95% intervals, a few responses) and the evaluate results of the
model RL started from and of its final policy (val loss, HellaSwag):

- a row of three panels under the loss and HellaSwag ones: reward per step, KL per step, reward against KL;
- the pre-trained model beside the final policy (the notebook's table, and metrics.tsv's `rl` rows);
- their responses to the same held-out prompts side by side (the notebook, and rl_samples.md).

report.py calls it; nothing here imports report.py.
"""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path

from matplotlib.ticker import MaxNLocator

from gpt2pipe import Gpt2pipeError
from gpt2pipe.files import atomic_path

# metrics.tsv's columns with an rl section (its `train` rows leave the RL ones empty, its `rl` rows the tokens)
RL_COLUMNS = ["reward", "reward_ci95", "kl", "kl_ci95", "held_out_prompts"]


def inputs(cfg, rl_log=None, rl_evaluated=None) -> tuple[str, list[str]] | None:
    """(rl.log, [the evaluate result of the start, of the final policy], "" where there is none) of a config with
    an rl section; None without one, or (rl.log not named) while RL has not run: the report is drawn without it."""
    from gpt2pipe import layout

    if cfg.rl is None:
        if rl_log is not None or rl_evaluated is not None:
            raise Gpt2pipeError("RL results given, but the config has no rl section")
        return None
    log = Path(rl_log or layout.rl_dir(cfg.raw) / "rl.log")
    if rl_log is None and not log.is_file():
        print(f"report: no RL results yet ({log} not found): drawn without them")
        return None
    if rl_evaluated is None:  # the workflow's, those that exist
        rl_evaluated = [p if p.is_file() else "" for p in layout.rl_evaluations(cfg.raw)]
    elif len(rl_evaluated) != 2:
        raise Gpt2pipeError("--rl-evaluated takes 2 files (the start's and the final policy's), "
                            f"not {len(rl_evaluated)}")
    return str(log), [str(p) for p in rl_evaluated]


def parse_rl_log(path: str | Path) -> list[dict]:
    """rl.log (a header, then one tab-separated row per step) -> one dict of floats per step."""
    path = Path(path)
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    try:
        return [{k: float(v) for k, v in row.items()} for row in rows]
    except (TypeError, ValueError):
        raise Gpt2pipeError(f"{path}: not an rl.log (a header, then one tab-separated row of numbers a step)") from None


def load(rl_log: str | Path, evaluated: list[str | Path], rl_cfg) -> dict:
    """The RL results the report draws: the logged steps, every held-out result beside rl.log (the declared ones
    of step 0 and the final step, and those of the checkpoints between), and the evaluate results of the
    starting model and of the final policy, step rl.steps (`evaluated`: their two paths; "": not known).
    rl_cfg: the RLConfig (the final step; PPO's KL target, drawn as a line)."""
    held_out = sorted((json.loads(p.read_text()) for p in Path(rl_log).parent.glob("eval_*.json")),
                      key=lambda r: r["step"])
    start, final = [json.loads(Path(p).read_text()) if p else None for p in evaluated]
    return {"log": parse_rl_log(rl_log), "held_out": held_out, "start": start, "final": final,
            "final_step": rl_cfg.steps, "kl_target": rl_cfg.kl_target if rl_cfg.algorithm == "ppo" else None}


def _held(rl: dict, step: int) -> dict | None:
    return next((r for r in rl["held_out"] if r["step"] == step), None)


def draw(axes, rl: dict) -> None:
    """Reward and KL per step (each training batch's mean from rl.log, and the held-out mean with its 95%
    interval at each checkpoint), and the held-out reward against KL: how much reward each nat bought."""
    ax_reward, ax_kl, ax_both = axes
    steps = [r["step"] for r in rl["log"]]
    held = rl["held_out"]
    n = held[0]["reward"]["n"] if held else 0
    ax_reward.plot(steps, [r["reward_mean"] for r in rl["log"]], color="tab:blue", lw=1, label="training batch mean")
    ax_kl.plot(steps, [r["kl"] for r in rl["log"]], color="tab:orange", lw=1, label="training batch mean")
    for ax, key, color in ((ax_reward, "reward", "tab:blue"), (ax_kl, "kl", "tab:orange")):
        if held:
            ax.errorbar([r["step"] for r in held], [r[key]["mean"] for r in held],
                        yerr=[r[key]["ci95"] for r in held], fmt="o", color=color, ms=5, capsize=3,
                        label=f"held out ({n} prompts, 95% CI)")
    if rl["kl_target"]:  # PPO's adaptive coefficient steers the training batches' KL toward it
        ax_kl.axhline(rl["kl_target"], color="black", lw=0.8, ls=":", label=f"KL target ({rl['kl_target']:g})")
    ax_both.plot([r["kl"] for r in rl["log"]], [r["reward_mean"] for r in rl["log"]], color="tab:gray", lw=0.8,
                 alpha=0.5, label="training batches")
    if held:
        ax_both.errorbar([r["kl"]["mean"] for r in held], [r["reward"]["mean"] for r in held],
                         xerr=[r["kl"]["ci95"] for r in held], yerr=[r["reward"]["ci95"] for r in held], fmt="o-",
                         color="tab:purple", ms=5, capsize=3, label="held out, by step")
        for r in held:
            ax_both.annotate(str(r["step"]), (r["kl"]["mean"], r["reward"]["mean"]), textcoords="offset points",
                             xytext=(4, 4), fontsize=7)
    ax_reward.set(xlabel="RL step", ylabel="reward", title="RL: reward")
    ax_kl.set(xlabel="RL step", ylabel="nats per response", title="RL: KL to the pre-trained model")
    ax_both.set(xlabel="KL (nats per response)", ylabel="reward", title="RL: reward against KL")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in (ax_reward, ax_kl):  # whole steps
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _value(result: dict | None, *keys: str) -> float | None:
    """result[k1][k2]..., None where the result or a key is missing."""
    for k in keys:
        result = None if result is None else result.get(k)
    return result


def metrics_rows(rl: dict) -> list[dict]:
    """metrics.tsv's rl rows: one per held-out step (and step 0 and the final step in any case), with val loss
    and HellaSwag where they were evaluated (the start and the final policy)."""
    evaluated = {0: rl["start"], rl["final_step"]: rl["final"]}
    rows = []
    for step in sorted({r["step"] for r in rl["held_out"]} | set(evaluated)):
        ev, held = evaluated.get(step), _held(rl, step)
        rows.append({"stage": "rl", "step": step, "tokens": None, "val_loss": _value(ev, "val_loss"),
                     "hellaswag_acc_norm": _value(ev, "hellaswag_acc_norm"),
                     "hellaswag_acc": _value(ev, "hellaswag_acc"),
                     "reward": _value(held, "reward", "mean"), "reward_ci95": _value(held, "reward", "ci95"),
                     "kl": _value(held, "kl", "mean"), "kl_ci95": _value(held, "kl", "ci95"),
                     "held_out_prompts": _value(held, "reward", "n")})
    return rows


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _pm(held: dict | None, key: str) -> str:
    return "-" if held is None else f"{held[key]['mean']:.4f} ± {held[key]['ci95']:.4f}"


def table_markdown(rl: dict) -> str:
    """The pre-trained model beside the final policy: what RL bought (held-out reward) and what it gave up
    (val loss on the pre-training val shard, HellaSwag), with the KL between them."""
    final = rl["final_step"]
    rows = ["| model | val loss | HellaSwag acc_norm | held-out reward (95% CI) | KL, nats (95% CI) |",
            "|---|---:|---:|---:|---:|"]
    for name, step, ev in (("pre-trained (RL step 0)", 0, rl["start"]), (f"RL step {final}", final, rl["final"])):
        held = _held(rl, step)
        rows.append(f"| {name} | {_num(_value(ev, 'val_loss'))} | {_num(_value(ev, 'hellaswag_acc_norm'))} | "
                    f"{_pm(held, 'reward')} | {_pm(held, 'kl')} |")
    n = _value(_held(rl, final) or _held(rl, 0), "reward", "n")
    note = f"Held out: {n} prompts never trained on." if n else "No held-out prompts (rl.eval_prompts is 0)."
    return "\n".join(["## RL: the pre-trained model and the final policy", "", *rows, "", note])


def side_by_side(rl: dict) -> list[dict]:
    """The final policy's responses beside step 0's (the pre-trained model's), prompt by prompt: the held-out
    results of both show the same prompts, drawn with the same seed."""
    before, after = _held(rl, 0), _held(rl, rl["final_step"])
    if before is None or after is None:
        return []
    return [{"prompt": b["prompt"], "before": b["response"], "before_reward": b["reward"], "after": a["response"],
             "after_reward": a["reward"]}
            for b, a in zip(before.get("samples", []), after.get("samples", [])) if a["prompt"] == b["prompt"]]


def _cell(text: str) -> str:
    """Text as one markdown table cell: HTML-escaped, `|` escaped, line breaks as <br>."""
    return html.escape(text, quote=False).replace("|", "\\|").replace("\n", "<br>") or " "


def samples_markdown(rl: dict) -> str:
    """side_by_side as a markdown table (the notebook shows it; rl_samples.md holds it)."""
    final = rl["final_step"]
    rows = side_by_side(rl)
    head = [f"## RL samples: the pre-trained model (step 0) and the final policy (step {final})", ""]
    if not rows:
        return "\n".join(head + ["No held-out responses of both steps to show (rl.eval_prompts is 0, or the "
                                 "results were written before they held responses)."]) + "\n"
    head += [f"The same {len(rows)} held-out prompts, each response with its reward.", "",
             f"| prompt | pre-trained (step 0) | RL step {final} |", "|---|---|---|"]
    return "\n".join(head + [f"| {_cell(r['prompt'])} | {_cell(r['before'])} ({r['before_reward']:.3f}) | "
                             f"{_cell(r['after'])} ({r['after_reward']:.3f}) |" for r in rows]) + "\n"


def write_samples(rl: dict, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(samples_markdown(rl))
