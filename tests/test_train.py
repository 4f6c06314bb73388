import dataclasses

import pytest
import torch

from gpt2pipe import Gpt2pipeError, config
from gpt2pipe.model import checkpoint
from gpt2pipe.train import loop as train_mod
from gpt2pipe.data.llmc_format import write_shard

from conftest import crash_then_resume


def run_train(cfg, shards, run_dir, **kw):
    return train_mod.train(cfg, shards, run_dir, progress=False, **kw)


def test_training_writes_checkpoints_and_llmc_log(tiny, tiny_shards, tmp_path):
    out = run_train(tiny, tiny_shards, tmp_path / "run")
    log = (tmp_path / "run" / "train" / "train.log").read_text().splitlines()
    assert log[0].startswith("s:0 tel:") and log[1].startswith("s:0 trl:")
    trl = [ln for ln in log if " trl:" in ln]
    assert len(trl) == 6 and trl[-1].startswith("s:5 trl:")
    assert [ln.split()[0] for ln in log if "tel:" in ln] == ["s:0", "s:3", "s:6"]
    assert "lr:" in trl[0] and "norm:" in trl[0]
    assert out["train_losses"][-1] < out["train_losses"][0]
    for step in (3, 6):
        model, ck = checkpoint.load_model(tmp_path / "run" / "train" / f"model_{step:06d}.pt", tiny.model)
        assert ck["step"] == step and ck["tokens_seen"] == step * 256
    state = checkpoint.read(tmp_path / "run" / "train_state" / "state_000006.pt")
    assert {"optimizer", "loader", "rng", "identity", "guard", "fp8"} <= state.keys()


def test_resume_after_a_crash_continues_identically(tiny, tiny_shards, tmp_path, monkeypatch):
    run_train(tiny, tiny_shards, tmp_path / "full")
    reference = (tmp_path / "full" / "train" / "train.log").read_text()
    crash_then_resume(tiny, tiny_shards, tmp_path / "crashed", monkeypatch)
    assert (tmp_path / "crashed" / "train" / "train.log").read_text() == reference
    a = checkpoint.read(tmp_path / "full" / "train" / "model_000006.pt")["model"]
    b = checkpoint.read(tmp_path / "crashed" / "train" / "model_000006.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "crashed" / "train" / "model_000003.pt").exists()


def test_checkpoint_of_another_shape_is_refused(tiny, tiny_shards, tmp_path):
    run_train(tiny, tiny_shards, tmp_path / "run")
    other = dataclasses.replace(tiny.model, n_layer=3)
    with pytest.raises(Gpt2pipeError, match=r"another model shape \(checkpoint vs config: n_layer 2 != 3\)"):
        checkpoint.load_model(tmp_path / "run" / "train" / "model_000006.pt", other)
    raw = dict(tiny.raw, model=dict(tiny.raw["model"], n_layer=3))
    with pytest.raises(Gpt2pipeError, match="another model shape"):
        run_train(config.from_dict(raw), tiny_shards, tmp_path / "run", resume=True)
    (tmp_path / "junk.pt").write_bytes(b"garbage")
    with pytest.raises(Gpt2pipeError, match=r"junk.pt: not a checkpoint gpt2pipe can read \(a text file"):
        checkpoint.read(tmp_path / "junk.pt")
    torch.save({"x": 1}, tmp_path / "foreign.pt")
    with pytest.raises(Gpt2pipeError, match="not a checkpoint gpt2pipe can read .a torch file without gpt2pipe's"):
        checkpoint.read(tmp_path / "foreign.pt")


def test_bad_shards_fail_before_training(tiny, tiny_shards, tmp_path):
    shard = sorted(tiny_shards.glob("*_train_*.bin"))[0]
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(Gpt2pipeError, match="corrupt shard"):
        run_train(tiny, tiny_shards, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    # llm.c shards from elsewhere (no manifest recording their largest token): every batch is checked
    (tiny_shards / "shards.json").unlink()
    for shard in tiny_shards.glob("*_train_*.bin"):
        write_shard(shard, [1, 2, 50300] * 400)
    with pytest.raises(Gpt2pipeError, match=r"_train_\d+\.bin: token 50300 at position \d+ is outside the vocabulary"):
        run_train(tiny, tiny_shards, tmp_path / "run")


def test_keep_last_states(tiny, tiny_shards, tmp_path):
    cfg = config.from_dict(dict(tiny.raw, train=dict(tiny.raw["train"], max_steps=9, keep_states=2)))
    run_train(cfg, tiny_shards, tmp_path / "run")
    state_dir = tmp_path / "run" / "train_state"
    assert sorted(p.name for p in state_dir.glob("state*.pt")) == ["state_000006.pt", "state_000009.pt"]
    assert checkpoint.read(state_dir / "state_000009.pt")["step"] == 9
    assert sorted(p.name for p in state_dir.glob("model_*.pt")) == ["model_000003.pt", "model_000006.pt",
                                                                    "model_000009.pt"]
