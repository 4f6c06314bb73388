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
