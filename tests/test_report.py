import json

import pytest

from gpt2pipe import Gpt2pipeError
from gpt2pipe.report import load_evals, parse_log, plot

from conftest import SHARED


def test_parse_llmc_log(tmp_path):
    (tmp_path / "a.log").write_text("s:0 tel:11.0095\ns:0 trl:11.0116 lr:0.000001 norm:14.96\n"
                                    "s:1 trl:10.9586 lr:0.000002 norm:15.18\ns:250 eval:0.2535\n")
    log = parse_log(tmp_path / "a.log")
    assert log["trl"] == [(0, 11.0116), (1, 10.9586)]
    assert log["tel"] == [(0, 11.0095)] and log["eval"] == [(250, 0.2535)]
    (tmp_path / "b.log").write_text("s:x trl:1\n")
    with pytest.raises(Gpt2pipeError, match="b.log:1: not an llm.c log line"):
        parse_log(tmp_path / "b.log")


@pytest.mark.skipif(not (SHARED / "reference").exists(), reason="needs ../shared/data")
def test_reference_run_log():
    ref = parse_log(SHARED / "reference" / "gpt2_124M_main.log")
    assert ref["tel"][-1][1] == pytest.approx(3.2731)
    assert ref["eval"][-1][1] == pytest.approx(0.3054)


def test_plot_writes_a_png(tmp_path):
    (tmp_path / "train.log").write_text("".join(f"s:{s} trl:{10 - s / 10:.4f} lr:0.001 norm:1.0\n" for s in range(20)))
    evals = []
    for step in (10, 20):
        (tmp_path / f"step_{step}.json").write_text(json.dumps(
            {"step": step, "val_loss": 10 - step / 10, "hellaswag_acc_norm": 0.25 + step / 1000}))
    evals = load_evals([tmp_path / "step_20.json", tmp_path / "step_10.json"])
    assert [e["step"] for e in evals] == [10, 20]
    fig = plot(tmp_path / "train.log", evals, tmp_path / "out.png", tokens_per_step=2048, baseline="124M",
               reference_log=tmp_path / "train.log", log_scale=True)
    png = (tmp_path / "out.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    labels = [t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts()]
    assert "OpenAI GPT-2 (124M) val" in labels and "OpenAI GPT-3 (124M)" in labels and "val loss (checkpoints)" in labels
    assert fig.axes[0].get_yscale() == "log"
