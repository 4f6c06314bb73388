import json
from pathlib import Path

import pytest

from gpt2pipe import Gpt2pipeError
from gpt2pipe.report import binomial_interval, load_evals, parse_log, plot

REFERENCE_LOG = Path(__file__).parent / "data" / "gpt2_124M_main_slice.log"  # provenance: tests/data/README.md


def test_parse_llmc_log(tmp_path):
    (tmp_path / "a.log").write_text("s:0 tel:11.0095\ns:0 trl:11.0116 lr:0.000001 norm:14.96\n"
                                    "s:1 trl:10.9586 lr:0.000002 norm:15.18\ns:250 eval:0.2535\n")
    log = parse_log(tmp_path / "a.log")
    assert log["trl"] == [(0, 11.0116), (1, 10.9586)]
    assert log["tel"] == [(0, 11.0095)] and log["eval"] == [(250, 0.2535)]
    (tmp_path / "b.log").write_text("s:x trl:1\n")
    with pytest.raises(Gpt2pipeError, match="b.log:1: not an llm.c log line"):
        parse_log(tmp_path / "b.log")


def test_reference_run_log():
    """llm.c's own GPT-2 124M log (a vendored slice) parses into its known final numbers."""
    ref = parse_log(REFERENCE_LOG)
    assert ref["tel"][0] == (0, pytest.approx(11.0095))
    assert ref["tel"][-1] == (19552, pytest.approx(3.2731))
    assert ref["eval"][-1] == (19552, pytest.approx(0.3054))
    assert len(ref["eval"]) == 79 and all(s % 250 == 0 for s, _ in ref["trl"])


def test_binomial_interval():
    lo, hi = binomial_interval(0.3, 200)  # Wilson 95%: 0.241..0.366
    assert lo == pytest.approx(0.2405, abs=1e-3) and hi == pytest.approx(0.3662, abs=1e-3)
    lo10k, hi10k = binomial_interval(0.3, 10042)
    assert hi10k - lo10k < (hi - lo) / 5
    assert binomial_interval(0.0, 50)[0] == 0.0 and binomial_interval(1.0, 50)[1] == 1.0


def _run_files(tmp_path, accs=(0.27, 0.26), n=200):
    (tmp_path / "train.log").write_text("".join(f"s:{s} trl:{10 - s / 10:.4f} lr:0.001 norm:1.0\n" for s in range(21)))
    paths = []
    for step, acc in zip((10, 20), accs):
        paths.append(tmp_path / f"step_{step}.json")
        paths[-1].write_text(json.dumps({"step": step, "val_loss": 10 - step / 10, "hellaswag_acc_norm": acc,
                                         "hellaswag_acc": acc, "hellaswag_examples": n}))
    return paths


def test_plot_draws_baselines_interval_and_a_fixed_scale(tmp_path):
    evals = load_evals(list(reversed(_run_files(tmp_path))))
    assert [e["step"] for e in evals] == [10, 20]
    fig = plot(tmp_path / "train.log", evals, tmp_path / "out.png", tokens_per_step=2048, baseline="124M",
               reference_log=REFERENCE_LOG, log_scale=True)
    png = (tmp_path / "out.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    ax_loss, ax_hs = fig.axes
    labels = [t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts()]
    for label in ("OpenAI GPT-2 124M val (FineWeb)", "OpenAI GPT-2 124M", "OpenAI GPT-3 125M",
                  "val loss (checkpoints)", "HellaSwag acc_norm (95% CI)", "chance (0.25)"):
        assert label in labels
    assert ax_loss.get_yscale() == "log"
    # error bars: the 95% interval of 200 rows around each point
    bars = [c for c in ax_hs.containers if c.has_yerr][0]
    segments = bars.lines[2][0].get_segments()
    lo, hi = binomial_interval(0.27, 200)
    assert segments[0][:, 1] == pytest.approx([lo, hi])
    # the axis spans chance to above GPT-3 125M, not the 0.26..0.27 wiggle of two noisy points
    bottom, top = ax_hs.get_ylim()
    assert bottom <= 0.25 and top >= 0.337 + 0.01


def test_baselines_only_where_they_mean_something(tmp_path):
    """auto: the baselines of a GPT-2 size and none for another shape; GPT-2's val loss (measured by llm.c on
    FineWeb) only on FineWeb data, the HellaSwag lines on any."""
    from gpt2pipe import config
    from gpt2pipe.report import resolve_baseline

    from conftest import tiny_config

    assert resolve_baseline(config.from_dict(tiny_config(tmp_path))) is None
    gpt2 = tiny_config(tmp_path, model={"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024})
    assert resolve_baseline(config.from_dict(gpt2)) == "124M"
    assert resolve_baseline(config.from_dict(tiny_config(tmp_path, report={"baseline": "350M"}))) == "350M"
    evals = load_evals(_run_files(tmp_path))
    fig = plot(tmp_path / "train.log", evals, tmp_path / "out.png", tokens_per_step=2048, baseline="124M",
               fineweb=False)
    labels = [t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts()]
    assert "OpenAI GPT-2 124M val (FineWeb)" not in labels and "OpenAI GPT-2 124M" in labels


def test_report_runs_outside_the_repo_with_the_packaged_notebook(tmp_path, monkeypatch):
    """`gpt2pipe report` from another folder, to an output folder that does not exist yet: the notebook
    shipped in the package is executed and holds the figure as an image output."""
    from gpt2pipe.cli import main

    evals = _run_files(tmp_path)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("run_name: r\nmodel: {n_layer: 2, n_head: 2, n_embd: 32, block_size: 32}\n"
                   "train: {seq_len: 32, micro_batch_size: 4, total_batch_tokens: 128}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    out = tmp_path / "new" / "folder" / "output.png"
    rc = main(["report", "-c", str(cfg), "--train-log", str(tmp_path / "train.log"),
               "--evals", *map(str, evals), "--out", str(out)])
    assert rc == 0 and out.read_bytes()[:4] == b"\x89PNG"
    nb = json.loads((out.parent / "report.ipynb").read_text())
    images = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) == 1
    assert (out.parent / "metrics.tsv").read_text().splitlines()[1].split("\t")[:2] == ["10", "1280"]


def test_report_error_names_the_missing_file(tmp_path):
    from gpt2pipe import config
    from gpt2pipe.report import run

    cfg = config.from_dict({"results_dir": str(tmp_path)})
    with pytest.raises(Gpt2pipeError, match="no eval results"):
        run(cfg)
    evals = _run_files(tmp_path)
    with pytest.raises(Gpt2pipeError, match="nope.log: not found"):
        run(cfg, evals=evals, train_log=tmp_path / "nope.log")


# --- report.compare_runs: other runs on the same axes, in tokens ---------------------------------------

def _trained_run(tiny, shards, results, name, **train):
    """A real tiny run under results/<name>: its train.log, the resolved config.yaml the workflow writes
    (layout.stage_config_text) and an eval result per checkpoint made from its logged val losses."""
    from gpt2pipe import config, layout
    from gpt2pipe.train import loop as train_mod

    raw = dict(tiny.raw, run_name=name, results_dir=str(results), train=dict(tiny.raw["train"], **train))
    cfg = config.from_dict(raw)
    train_mod.train(cfg, shards, cfg.run_dir, progress=False)
    (cfg.run_dir / "config.yaml").write_text(layout.stage_config_text(cfg.raw, "report"))
    (cfg.run_dir / "eval").mkdir()
    for step, val in parse_log(cfg.run_dir / "train" / "train.log")["tel"]:
        if step:
            (cfg.run_dir / "eval" / f"step_{step:06d}.json").write_text(json.dumps(
                {"step": step, "val_loss": val, "hellaswag_acc_norm": 0.25, "hellaswag_acc": 0.25,
                 "hellaswag_examples": 8}))
    return cfg


def test_compared_runs_are_drawn_in_tokens_and_their_loss_reached(tiny, tiny_shards, tmp_path):
    """Two real tiny runs with different batch sizes: each is drawn at its own tokens per step, and the
    report says when this run reached the other's final val loss."""
    from gpt2pipe import config
    from gpt2pipe.report import comparison_lines, compared_runs, load_compared

    results = tmp_path / "res"
    # the "GPT-2" run: 6 steps of 256 tokens; the "speedrun": 12 steps of 128 tokens, Muon, at a higher rate
    _trained_run(tiny, tiny_shards, results, "slow", max_steps=6)
    fast = _trained_run(tiny, tiny_shards, results, "fast", max_steps=12, micro_batch_size=2,
                        total_batch_tokens=128, optimizer="muon", learning_rate=0.01, checkpoint_every=6,
                        val_every=3)
    cfg = config.from_dict(dict(fast.raw, report=dict(fast.raw["report"], compare_runs=["slow", "never"])))
    runs = compared_runs(cfg)
    assert [(r["name"], r["exists"]) for r in runs] == [("slow", True), ("never", False)]
    compare = load_compared(runs)
    assert [(r["name"], r["tokens_per_step"], len(r["evals"])) for r in compare] == [("slow", 256, 2)]
    log = fast.run_dir / "train" / "train.log"
    evals = load_evals(sorted((fast.run_dir / "eval").glob("*.json")))
    fig = plot(log, evals, tmp_path / "both.png", tokens_per_step=128, compare=compare, name="fast")
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
    for label in ("slow train loss", "slow val loss", "fast train loss", "fast val loss (checkpoints)"):
        assert label in lines, list(lines)
    # x = tokens: step 5 of "slow" is 5 x 256 tokens, step 11 of "fast" 11 x 128 (in M on this scale)
    assert lines["slow train loss"].get_xdata()[-1] == pytest.approx(5 * 256 / 1e6)
    assert lines["fast train loss"].get_xdata()[-1] == pytest.approx(11 * 128 / 1e6)
    assert lines["slow val loss"].get_xdata().tolist() == pytest.approx([0, 3 * 256 / 1e6, 6 * 256 / 1e6])
    slow_final = load_evals(runs[0]["evals"])[-1]["val_loss"]
    text = comparison_lines("fast", parse_log(log), evals, 128, compare)
    assert len(text) == 1 and text[0].startswith(f"slow: final val loss {slow_final:.4f} at 1,536 tokens; fast ")
    fast_val = parse_log(log)["tel"]  # the evals above hold the same values at the checkpoints
    first = next((s for s, v in fast_val if v <= slow_final), None)
    if first is None:
        assert "has not reached it" in text[0]
    else:
        assert f"reaches it at {first * 128:,} tokens ({first * 128 / 1536:.1%} of theirs)" in text[0]


def test_report_cli_draws_the_compared_run_and_names_a_missing_one(tmp_path):
    """`gpt2pipe report` with report.compare_runs over llm.c's real GPT-2 124M log as the other run."""
    from gpt2pipe import config, layout
    from gpt2pipe.cli import main

    results = tmp_path / "res"
    gpt2 = config.load(Path(__file__).parents[1] / "config" / "gpt2-124M.yaml",
                       [f"results_dir={results}"])
    (gpt2.run_dir / "train").mkdir(parents=True)
    (gpt2.run_dir / "train" / "train.log").write_text(REFERENCE_LOG.read_text())
    (gpt2.run_dir / "config.yaml").write_text(layout.stage_config_text(gpt2.raw, "report"))
    (results / "speed").mkdir()
    # this run: 524,288 tokens per step like the reference, val loss 3.20 (below its final 3.2731) at step 5000
    (results / "speed" / "train.log").write_text("".join(f"s:{s} tel:{v}\n" for s, v in
                                                         [(0, 11.0), (2500, 3.5), (5000, 3.20), (6000, 3.15)]))
    evals = _run_files(tmp_path)
    cfg = tmp_path / "speed.yaml"
    cfg.write_text(f"run_name: speed\nresults_dir: {results}\nreport: {{compare_runs: [gpt2-124M, other]}}\n")
    out = results / "speed" / "output.png"
    assert main(["report", "-c", str(cfg), "--train-log", str(results / "speed" / "train.log"),
                 "--evals", *map(str, evals), "--out", str(out)]) == 0
    nb = json.loads((out.parent / "report.ipynb").read_text())
    said = json.dumps(nb)
    assert "compare_runs: other is not drawn" in said
    # llm.c's run ends at 3.2731 after 19,552 steps; this one logs 3.20 at step 5000: a quarter of the tokens
    assert ("gpt2-124M: final val loss 3.2731 at 10,250,878,976 tokens; speed reaches it at 2,621,440,000 "
            "tokens (25.6% of theirs)") in said
    images = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) == 1


@pytest.mark.slow
def test_workflow_report_follows_the_compared_runs_without_locking_them(tmp_path):
    """Snakemake: a compared run's train.log, config.yaml and eval results are not inputs of the report (they
    would be locked, and that run's own workflow could not train beside this one) but their signature is its
    parameter, so it is redrawn when they change; a run not trained yet leaves the rest of the workflow free."""
    import subprocess
    import sys

    import yaml

    from conftest import ROOT, tiny_config
    from gpt2pipe.layout import compared_runs_signature, runs_named

    cfg = tiny_config(tmp_path, report={"compare_runs": ["other"]})
    cfg["results_dir"] = "results"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "workflow" / "Snakefile"), "--cores", "1",
           "--directory", str(tmp_path), "--dry-run", "results/tiny/output.png",
           "--quiet", "host",  # each job's block (a dry run shows the plan on one screen otherwise)
           f"--configfile={tmp_path / 'config.yaml'}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "report.compare_runs: other has no results/other/train/train.log" in r.stderr
    results = tmp_path / "results"
    before = compared_runs_signature(runs_named(str(results), ["other"]))
    other = results / "other"
    (other / "train").mkdir(parents=True)
    (other / "eval").mkdir()
    (other / "train" / "train.log").write_text("s:0 tel:11.0\n")
    (other / "config.yaml").write_text("run_name: other\n")
    (other / "eval" / "step_000006.json").write_text("{}")
    trained = compared_runs_signature(runs_named(str(results), ["other"]))
    with (other / "train" / "train.log").open("a") as f:
        f.write("s:6 tel:9.0\n")
    assert len({before, trained, compared_runs_signature(runs_named(str(results), ["other"]))}) == 3
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    report_job = r.stdout.split("rule report:", 1)[1].split("\n\n", 1)[0]
    assert "results/other" not in report_job, report_job
    assert "report.compare_runs" not in r.stderr


def test_a_compared_run_with_only_its_step_0_val_loss_is_compared_without_dividing_by_zero(tmp_path):
    """A compared run that has just started has one val point, at step 0 (0 tokens): the line still reads."""
    from gpt2pipe.report import comparison_lines

    theirs = tmp_path / "theirs.log"
    theirs.write_text("s:0 tel:10.9000\n")
    mine = {"tel": [(0, 11.0), (10, 9.0)], "trl": []}
    lines = comparison_lines("mine", mine, [], 100, [{"name": "gpt2", "log": theirs, "evals": [],
                                                        "tokens_per_step": 1000}])
    assert lines == ["gpt2: final val loss 10.9000 at 0 tokens; mine reaches it at 1,000 tokens"]


# --- the RL panel, table and samples (an rl section) ------------------------------------------------------

RL_HEADER = ("step\treward_mean\treward_std\tkl\tkl_coef\tentropy\tpolicy_loss\tvalue_loss\tpolicy_clipfrac\t"
             "value_clipfrac\tapproxkl\tresponse_length\trollout_s\tupdate_s\tsamples_per_s")


def _rl_files(tmp_path) -> tuple[Path, list[Path]]:
    """What the rl stage and the evaluate rules write for a 4-step run with checkpoints every 2 steps: rl.log,
    held-out results of steps 0, 2, 4 (two responses each), and the evaluate results of start and final."""
    rl = tmp_path / "run" / "rl"
    rl.mkdir(parents=True)
    rows = [(0, 0.10, 0.0), (1, 0.20, 1.5), (2, 0.30, 2.5), (3, 0.45, 3.5)]
    (rl / "rl.log").write_text(RL_HEADER + "\n" + "".join(
        f"{s}\t{r}\t0.2\t{k}\t0.05\t3.1\t0.01\t0.1\t0.1\t0.0\t0.01\t16\t0.5\t1.2\t20\n" for s, r, k in rows))
    prompts = ["ROMEO:\nO, she doth", "JULIET | nurse"]
    for step, reward, kl, responses in ((0, 0.05, 0.0, ["<b>not</b> here", "ill, ill"]),
                                        (2, 0.25, 2.0, ["fair", "good"]),
                                        (4, 0.55, 4.0, [" teach the torches\nto burn bright", "sweet love"])):
        (rl / f"eval_{step:06d}.json").write_text(json.dumps({
            "step": step, "reward": {"mean": reward, "ci95": 0.04, "n": 256}, "kl": {"mean": kl, "ci95": 0.3, "n": 256},
            "samples": [{"prompt": p, "response": r, "reward": reward + i / 10}
                        for i, (p, r) in enumerate(zip(prompts, responses))]}))
    start, final = tmp_path / "run" / "eval" / "step_000020.json", rl / "evaluate_000004.json"
    start.parent.mkdir()
    start.write_text(json.dumps({"step": 20, "val_loss": 5.25, "hellaswag_acc_norm": 0.27, "hellaswag_acc": 0.26,
                                 "hellaswag_examples": 200}))
    final.write_text(json.dumps({"step": 4, "val_loss": 5.75, "hellaswag_acc_norm": 0.255, "hellaswag_acc": 0.25,
                                 "hellaswag_examples": 200}))
    return rl / "rl.log", [start, final]


def _rl_config(tmp_path, **rl):
    from gpt2pipe import config

    from conftest import tiny_config

    raw = tiny_config(tmp_path)
    raw["rl"] = {"steps": 4, "checkpoint_every": 2, "kl_target": 3.0, "prompt_tokens": 8, "max_new_tokens": 8, **rl}
    return config.from_dict(raw)


def test_rl_panels_table_and_samples_from_the_rl_stage_outputs(tmp_path):
    """Reward and KL per step (rl.log's batch means, the held-out means with their 95% intervals), reward against
    KL, the start beside the final policy, and their responses to the same prompts side by side."""
    from gpt2pipe import report_rl

    rl_log, evaluated = _rl_files(tmp_path)
    rl = report_rl.load(rl_log, evaluated, _rl_config(tmp_path).rl)
    assert [r["step"] for r in rl["held_out"]] == [0, 2, 4] and rl["final_step"] == 4 and rl["kl_target"] == 3.0
    evals = load_evals(_run_files(tmp_path))
    fig = plot(tmp_path / "train.log", evals, tmp_path / "out.png", tokens_per_step=2048, rl=rl)
    assert len(fig.axes) == 5
    ax_reward, ax_kl, ax_both = fig.axes[2:]
    assert list(ax_reward.lines[0].get_ydata()) == [0.10, 0.20, 0.30, 0.45]
    assert list(ax_kl.lines[0].get_ydata()) == [0.0, 1.5, 2.5, 3.5]
    bars = [c for c in ax_reward.containers if c.has_yerr][0]
    assert list(bars.lines[0].get_ydata()) == [0.05, 0.25, 0.55]
    assert bars.lines[2][0].get_segments()[2][:, 1] == pytest.approx([0.51, 0.59])  # 0.55 +- 0.04
    assert "KL target (3)" in [t.get_text() for t in ax_kl.get_legend().get_texts()]
    trade = [c for c in ax_both.containers if c.has_yerr][0]
    assert list(trade.lines[0].get_xdata()) == [0.0, 2.0, 4.0]
    assert list(trade.lines[0].get_ydata()) == [0.05, 0.25, 0.55]
    # the table: what RL bought and what it gave up
    table = report_rl.table_markdown(rl)
    assert "| pre-trained (RL step 0) | 5.2500 | 0.2700 | 0.0500 ± 0.0400 | 0.0000 ± 0.3000 |" in table
    assert "| RL step 4 | 5.7500 | 0.2550 | 0.5500 ± 0.0400 | 4.0000 ± 0.3000 |" in table
    assert "256 prompts" in table
    rows = report_rl.metrics_rows(rl)
    assert [(r["step"], r["val_loss"], r["reward"], r["kl"]) for r in rows] == [
        (0, 5.25, 0.05, 0.0), (2, None, 0.25, 2.0), (4, 5.75, 0.55, 4.0)]
    # side by side: the same prompt, step 0's response and the final one's, escaped as table cells
    pairs = report_rl.side_by_side(rl)
    assert [(p["before"], p["after"]) for p in pairs] == [("<b>not</b> here", " teach the torches\nto burn bright"),
                                                          ("ill, ill", "sweet love")]
    md = report_rl.samples_markdown(rl).splitlines()
    assert md[-2] == ("| ROMEO:<br>O, she doth | &lt;b&gt;not&lt;/b&gt; here (0.050) | "
                      " teach the torches<br>to burn bright (0.550) |")
    assert md[-1] == "| JULIET \\| nurse | ill, ill (0.150) | sweet love (0.650) |"


def test_the_report_has_the_rl_panel_only_with_an_rl_section(tmp_path):
    """`gpt2pipe report` on the same pre-training results, with and without an rl section: with it the figure
    gains a row (twice the height), metrics.tsv a stage column and the rl rows, the notebook the RL table and
    samples, and rl_samples.md is written; without it none of that."""
    import yaml

    from gpt2pipe.cli import main

    evals = _run_files(tmp_path)
    rl_log, evaluated = _rl_files(tmp_path)
    outputs = {}
    for name, rl in (("with", True), ("without", False)):
        raw = _rl_config(tmp_path).raw if rl else {k: v for k, v in _rl_config(tmp_path).raw.items() if k != "rl"}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(raw))
        out = tmp_path / name / "output.png"
        args = ["report", "-c", str(tmp_path / f"{name}.yaml"), "--train-log", str(tmp_path / "train.log"),
                "--evals", *map(str, evals), "--out", str(out)]
        assert main(args + (["--rl-log", str(rl_log), "--rl-evaluated", *map(str, evaluated)] if rl else [])) == 0
        png = out.read_bytes()
        width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
        nb = json.loads((out.parent / "report.ipynb").read_text())
        shown = json.dumps([c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"], ensure_ascii=False)
        outputs[name] = (width, height, (out.parent / "metrics.tsv").read_text().splitlines(), shown)
    (w1, h1, with_rl, shown1), (w0, h0, without, shown0) = outputs["with"], outputs["without"]
    assert w1 == w0 and h1 == 2 * h0  # a second row of panels: 14 x 10 inches instead of 14 x 5
    assert without[0].split("\t") == ["step", "tokens", "val_loss", "hellaswag_acc_norm", "hellaswag_acc"]
    assert len(without) == 3 and not (tmp_path / "without" / "rl_samples.md").exists()
    assert "RL: the pre-trained model" not in shown0 and "RL step" not in shown0
    assert with_rl[0].split("\t") == ["stage", "step", "tokens", "val_loss", "hellaswag_acc_norm", "hellaswag_acc",
                                      "reward", "reward_ci95", "kl", "kl_ci95", "held_out_prompts"]
    assert with_rl[1].split("\t")[:4] == ["train", "10", "2560", "9.0"]  # 256 tokens a step
    assert with_rl[3:] == ["rl\t0\t\t5.25\t0.27\t0.26\t0.05\t0.04\t0.0\t0.3\t256",
                           "rl\t2\t\t\t\t\t0.25\t0.04\t2.0\t0.3\t256",
                           "rl\t4\t\t5.75\t0.255\t0.25\t0.55\t0.04\t4.0\t0.3\t256"]
    assert "| RL step 4 | 5.7500 | 0.2550 | 0.5500 ± 0.0400 |" in shown1 and "sweet love (0.650)" in shown1
    assert "sweet love (0.650)" in (tmp_path / "with" / "rl_samples.md").read_text()


def test_an_rl_section_before_rl_has_run_draws_the_report_without_it(tmp_path, capsys):
    """By hand, RL not run yet: the report is drawn as without RL and says why; an rl.log named but missing,
    or RL results for a config without an rl section, are refused."""
    from gpt2pipe.report import run

    cfg = _rl_config(tmp_path)
    evals = _run_files(tmp_path)
    run(cfg, evals=evals, train_log=tmp_path / "train.log", out=tmp_path / "a" / "output.png")
    assert "no RL results yet" in capsys.readouterr().out
    assert (tmp_path / "a" / "metrics.tsv").read_text().startswith("step\t")
    with pytest.raises(Gpt2pipeError, match="nope/rl.log: not found"):
        run(cfg, evals=evals, train_log=tmp_path / "train.log", rl_log=tmp_path / "nope" / "rl.log")
    from gpt2pipe import config

    with pytest.raises(Gpt2pipeError, match="the config has no rl section"):
        run(config.from_dict({"results_dir": str(tmp_path)}), evals=evals, train_log=tmp_path / "train.log",
            rl_log=tmp_path / "rl.log")


def test_rl_without_held_out_prompts_shows_the_evaluations_alone(tmp_path):
    """rl.eval_prompts 0: no held-out results; the table and metrics still set val loss and HellaSwag of the
    start beside the final policy's, and say there is nothing held out to show."""
    from gpt2pipe import report_rl

    rl_log, evaluated = _rl_files(tmp_path)
    for p in rl_log.parent.glob("eval_*.json"):
        p.unlink()
    rl = report_rl.load(rl_log, evaluated, _rl_config(tmp_path, eval_prompts=0).rl)
    assert [(r["step"], r["val_loss"], r["reward"]) for r in report_rl.metrics_rows(rl)] == [(0, 5.25, None),
                                                                                             (4, 5.75, None)]
    table = report_rl.table_markdown(rl)
    assert "| RL step 4 | 5.7500 | 0.2550 | - | - |" in table and "rl.eval_prompts is 0" in table
    assert report_rl.side_by_side(rl) == [] and "rl.eval_prompts is 0" in report_rl.samples_markdown(rl)
    fig = plot(tmp_path / "train.log", load_evals(_run_files(tmp_path)), tmp_path / "out.png", tokens_per_step=256,
               rl=rl)
    assert len(fig.axes) == 5 and list(fig.axes[2].lines[0].get_ydata()) == [0.10, 0.20, 0.30, 0.45]
