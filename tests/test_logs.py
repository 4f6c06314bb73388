"""Logging in one place: the llm.c text log always, TensorBoard scalars when asked for."""

import pytest

from gpt2pipe import Gpt2pipeError, config
from gpt2pipe.train import loop as train_mod
from gpt2pipe.train.logs import check_sinks


def test_tensorboard_gets_the_same_scalars_as_the_text_log(tiny, tiny_shards, tmp_path):
    pytest.importorskip("tensorboard")  # in the test extra; an install without it skips
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = config.from_dict(dict(tiny.raw, train=dict(tiny.raw["train"], log_to=["tensorboard"])))
    train_mod.train(cfg, tiny_shards, tmp_path / "run", progress=False)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    loss = {e.step: e.value for e in events.Scalars("train/loss")}
    val = {e.step: e.value for e in events.Scalars("val/loss")}
    text = (tmp_path / "run" / "train" / "train.log").read_text().splitlines()
    trl = {int(ln.split()[0][2:]): float(ln.split()[1][4:]) for ln in text if " trl:" in ln}
    tel = {int(ln.split()[0][2:]): float(ln.split()[1][4:]) for ln in text if " tel:" in ln}
    assert loss.keys() == trl.keys() and val.keys() == tel.keys() == {0, 3, 6}
    assert all(abs(loss[s] - trl[s]) < 1e-4 for s in trl)
    assert "perf/tokens_per_s" in events.Tags()["scalars"]


def test_a_missing_logger_package_stops_before_training(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(Gpt2pipeError, match="lists 'wandb' but the wandb package is not installed"):
        check_sinks(["wandb"])


def test_without_a_progress_bar_a_step_line_is_printed_now_and_then(tmp_path, capsys):
    """Batch jobs (--no-progress, SLURM logs) still see loss and speed: the first steps, then every 10th."""
    from gpt2pipe.train.logs import RunLog

    log = RunLog(tmp_path / "train.log", None, max_steps=25, progress=False)
    for step in range(25):
        log.train_step(step, loss=5.0 - step / 100, lr=1e-3, norm=0.5, skipped=False, ms=100.0,
                       tokens_per_s=5242.88, mfu=0.4)
    log.close()
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("step")]
    assert [ln.split("|")[0].split()[1] for ln in lines] == ["1/25", "2/25", "3/25", "10/25", "20/25"]
    assert "loss 4.9100" in lines[3] and "5,243 tok/s" in lines[3] and "40.0%" in lines[3]
    assert len((tmp_path / "train.log").read_text().splitlines()) == 25  # the llm.c log keeps every step



def test_progress_in_a_log_file_is_a_line_per_tenth_not_redraws(tmp_path):
    """gpt2pipe.progress.tqdm writing to a file (a Snakemake job's log): plain lines, no carriage returns, a
    tqdm.write in between not repeating the status; on a terminal it stays tqdm's bar."""
    from gpt2pipe.progress import tqdm

    path = tmp_path / "job.log"
    with open(path, "w") as f:
        for i in tqdm(range(100), desc="hellaswag", file=f):
            if i == 50:
                tqdm.write("a message", file=f)
    text = path.read_text()
    lines = text.splitlines()
    assert "\r" not in text and "a message" in lines
    status = [ln for ln in lines if ln.startswith("hellaswag: ")]
    assert [ln.split()[1] for ln in status] == [f"{p}%" for p in range(0, 101, 10)]
