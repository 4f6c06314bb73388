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
