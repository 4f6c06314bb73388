"""Nothing lost on resume: each way a run used to lose work or resume wrongly, reproduced."""

import os
import shutil

import pytest
import torch

from gpt2pipe import Gpt2pipeError, config
from gpt2pipe.cli import main
from gpt2pipe.model import checkpoint
from gpt2pipe.ops import fp8
from gpt2pipe.ops.flat_layout import ordered_params
from gpt2pipe.train import loop as train_mod
from gpt2pipe.train import state as state_mod


def run_train(cfg, shards, run_dir, **kw):
    return train_mod.train(cfg, shards, run_dir, progress=False, **kw)


def with_train(cfg, **changes):
    return config.from_dict(dict(cfg.raw, train=dict(cfg.raw["train"], **changes)))


def log_of(run_dir):
    return (run_dir / "train" / "train.log").read_text()


def trl_lines(run_dir):
    return [ln for ln in log_of(run_dir).splitlines() if " trl:" in ln]


# what a full disk raises midway through torch.save: an OSError, or torch's zip writer's multi-line RuntimeError
DISK_ERRORS = [OSError(28, "No space left on device"),
               RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4416 vs 4312\n"
                            "frame #0: c10::ThrowEnforceNotMet(char const*, int, char const*)")]


@pytest.mark.parametrize("error", DISK_ERRORS, ids=["oserror", "torch-zip-writer"])
def test_crash_while_writing_a_state_falls_back_to_the_last_complete_one(tiny, tiny_shards, tmp_path, monkeypatch,
                                                                         error):
    cfg = with_train(tiny, keep_states=2)
    run_train(cfg, tiny_shards, tmp_path / "full")
    real_save = torch.save

    def crash_on_step_6_state(obj, f, *a, **k):
        if isinstance(obj, dict) and obj.get("kind") == "train-state" and obj["step"] == 6:
            with open(f, "wb") as out:
                out.write(b"half a state")  # the write dies midway
            raise error
        return real_save(obj, f, *a, **k)

    state_dir = tmp_path / "run" / "train_state"
    with monkeypatch.context() as m:
        m.setattr(torch, "save", crash_on_step_6_state)
        with pytest.raises(Gpt2pipeError, match=rf"^{state_dir}/state_000006.pt: writing it failed "
                                                rf"\({type(error).__name__}: .*(No space|unexpected pos).*\).* free") as e:
            run_train(cfg, tiny_shards, tmp_path / "run")
    assert "\n" not in str(e.value)
    assert [p.name for p in state_dir.glob("state_*.pt")] == ["state_000003.pt"]  # no partial file left
    assert not list(state_dir.glob(".*.tmp"))
    run_train(cfg, tiny_shards, tmp_path / "run", resume=True)
    assert log_of(tmp_path / "run") == log_of(tmp_path / "full")
    assert sorted(p.name for p in (tmp_path / "run" / "train").glob("model_*.pt")) == \
        ["model_000003.pt", "model_000006.pt"]


def test_a_write_that_does_not_fit_on_the_disk_is_refused_before_it_starts(tiny, tiny_shards, tmp_path, monkeypatch):
    """The 6.7B run's fp32 state needed ~80 GB on a 64 GB disk: torch failed midway with 'unexpected pos'. The
    free space is checked first; the previous state stays as it was and the run resumes once there is room."""
    path, _ = full_run_and_state_at_3(tiny, tiny_shards, tmp_path, monkeypatch)
    before = path.read_bytes()
    real_usage = shutil.disk_usage

    def one_mb_free(folder):
        u = real_usage(folder)
        return type(u)(u.total, u.total - 1_000_000, 1_000_000)

    with monkeypatch.context() as m:
        m.setattr(shutil, "disk_usage", one_mb_free)
        with pytest.raises(Gpt2pipeError, match=rf"^{path.parent}/model_000006.pt: not written: it needs ~[\d.]+ MB "
                                                rf"and {path.parent} has 1.0 MB free"):
            run_train(tiny, tiny_shards, tmp_path / "run", resume=True)
    assert sorted(p.name for p in path.parent.iterdir() if p.name != "train.log") == \
        ["model_000003.pt", "state_000003.pt"]  # nothing half-written, nothing rotated away
    assert path.read_bytes() == before
    run_train(tiny, tiny_shards, tmp_path / "run", resume=True)
    assert trl_lines(tmp_path / "run") == trl_lines(tmp_path / "full")


def test_a_damaged_newest_state_is_skipped(tiny, tiny_shards, tmp_path):
    cfg = with_train(tiny, keep_states=3)
    run_train(cfg, tiny_shards, tmp_path / "full")
    state_dir = tmp_path / "full" / "train_state"
    newest = state_dir / "state_000006.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # e.g. a disk error after the write
    saved = state_mod.newest_state(state_dir, say=lambda m: None)
    assert saved["step"] == 3 and saved["path"].endswith("state_000003.pt")


def test_a_folder_whose_states_are_all_unreadable_is_refused_not_cleared(tiny, tiny_shards, tmp_path):
    """The newest state truncated, the older one damaged: --resume used to take the folder as new, delete the
    states, snapshots and log, and train from step 0. It is refused, naming the files, until --restart."""
    cfg = with_train(tiny, keep_states=2)
    run_train(cfg, tiny_shards, tmp_path / "run")
    state_dir = tmp_path / "run" / "train_state"
    newest, older = state_dir / "state_000006.pt", state_dir / "state_000003.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    older.write_bytes(b"\0" * 4096)
    files = {p: p.read_bytes() for p in sorted((tmp_path / "run").rglob("*")) if p.is_file()}
    for resume in (True, False):
        with pytest.raises(Gpt2pipeError, match=rf"^{state_dir}: no saved state loads \(state_000006.pt, "
                                                r"state_000003.pt\): pass --restart"):
            run_train(cfg, tiny_shards, tmp_path / "run", resume=resume)
        assert {p: p.read_bytes() for p in sorted((tmp_path / "run").rglob("*")) if p.is_file()} == files
    run_train(cfg, tiny_shards, tmp_path / "run", restart=True)
    assert sorted(p.name for p in state_dir.glob("state_*.pt")) == ["state_000003.pt", "state_000006.pt"]
    assert state_mod.newest_state(state_dir, say=lambda m: None)["step"] == 6


def test_settings_that_do_not_change_the_weights_may_change_on_resume(tiny, tiny_shards, tmp_path, monkeypatch):
    """Preempted, then resumed with another val_every, checkpoint cadence, thread count and device setting:
    the run continues (it used to restart from step 0) and trains exactly the same steps."""
    run_train(tiny, tiny_shards, tmp_path / "full")
    monkeypatch.setattr(train_mod, "_PREEMPT_AT", 4)
    with pytest.raises(train_mod.Preempted):
        run_train(tiny, tiny_shards, tmp_path / "run")
    monkeypatch.setattr(train_mod, "_PREEMPT_AT", -1)
    changed = with_train(tiny, val_every=2, checkpoint_every=2, num_threads=1, device="cpu", keep_states=2)
    monkeypatch.setattr(train_mod.Trainer, "train_step", counting(train_mod.Trainer.train_step, calls := []))
    run_train(changed, tiny_shards, tmp_path / "run", resume=True)
    assert len(calls) == 2  # steps 4 and 5 only
    assert trl_lines(tmp_path / "run") == trl_lines(tmp_path / "full")


def counting(method, calls):
    def wrapped(self, *a, **k):
        calls.append(self.state.step)
        return method(self, *a, **k)
    return wrapped


def test_a_changed_setting_that_changes_the_weights_is_refused_until_restart(tiny, tiny_shards, tmp_path):
    run_train(tiny, tiny_shards, tmp_path / "run")
    first = log_of(tmp_path / "run")
    changed = with_train(tiny, learning_rate=0.001, seed=7)
    with pytest.raises(Gpt2pipeError, match=r"other settings \(train.learning_rate: 0.003 -> 0.001; "
                                            r"train.seed: 42 -> 7\).*--restart"):
        run_train(changed, tiny_shards, tmp_path / "run", resume=True)
    with pytest.raises(Gpt2pipeError, match="holds a saved run at step 6: pass --resume"):
        run_train(tiny, tiny_shards, tmp_path / "run")  # never overwritten silently
    run_train(changed, tiny_shards, tmp_path / "run", restart=True)
    assert log_of(tmp_path / "run") != first
    assert [p.name for p in (tmp_path / "run" / "train_state").glob("state_*.pt")] == ["state_000006.pt"]


def test_a_finished_run_republishes_its_outputs_without_training(tiny, tiny_shards, tmp_path, monkeypatch):
    run_train(tiny, tiny_shards, tmp_path / "run")
    first = log_of(tmp_path / "run")
    for p in (tmp_path / "run" / "train").iterdir():  # what Snakemake does to a job's outputs after a failure
        p.unlink()
    monkeypatch.setattr(train_mod.Trainer, "train_step", lambda self: pytest.fail("retrained a finished run"))
    run_train(tiny, tiny_shards, tmp_path / "run", resume=True)
    assert log_of(tmp_path / "run") == first
    assert sorted(p.name for p in (tmp_path / "run" / "train").glob("model_*.pt")) == \
        ["model_000003.pt", "model_000006.pt"]


def test_an_fp8_state_resumes_where_the_model_is_not_converted(tiny, tiny_shards, tmp_path, monkeypatch, capsys):
    """A train.fp8 state saved on the kernels path (it holds fp8 scaling state) resumed where the kernels path
    does not run (ops torch here: CPU, no CuPy) used to stop in restore; it resumes with the scales dropped."""
    cfg = with_train(tiny, fp8=True)
    path, ck = full_run_and_state_at_3(cfg, tiny_shards, tmp_path, monkeypatch)
    assert ck["fp8"] is None  # (on CPU the model is never converted)
    scales = fp8.Fp8State(cfg.model.n_layer, "cpu")
    scales.amax_previous.fill_(3.0)
    ck["fp8"] = [scales.state_dict()]  # what a kernels-path process 0 saves
    torch.save(ck, path)
    capsys.readouterr()
    run_train(cfg, tiny_shards, tmp_path / "run", resume=True)
    out = capsys.readouterr().out
    assert f"{path}: its fp8 scaling state is dropped" in out
    assert "train.fp8 needs train.ops: kernels on a CUDA GPU with CuPy: this run trains without fp8" in out
    assert trl_lines(tmp_path / "run") == trl_lines(tmp_path / "full")
    assert torch.load(path.with_name("state_000006.pt"), weights_only=True)["fp8"] is None


def test_fp8_gemms_listed_in_another_order_resume(tiny, tiny_shards, tmp_path, monkeypatch):
    """train.fp8_gemms [qkv, head] and [head, qkv] train the same model: the resume used to be refused."""
    cfg = with_train(tiny, fp8=True, fp8_gemms=["qkv", "head"])
    path, ck = full_run_and_state_at_3(cfg, tiny_shards, tmp_path, monkeypatch)
    ck["identity"]["train"]["fp8_gemms"] = ["qkv", "head"]  # as a state saved before kept the config's order
    torch.save(ck, path)
    run_train(with_train(tiny, fp8=True, fp8_gemms=["head", "qkv"]), tiny_shards, tmp_path / "run", resume=True)
    assert trl_lines(tmp_path / "run") == trl_lines(tmp_path / "full")


def full_run_and_state_at_3(tiny, tiny_shards, tmp_path, monkeypatch):
    """An uninterrupted run in tmp_path/full, and one preempted at step 3 in tmp_path/run: (the path of its
    saved state, that state as loaded), for a test to alter and resume."""
    run_train(tiny, tiny_shards, tmp_path / "full")
    monkeypatch.setattr(train_mod, "_PREEMPT_AT", 3)
    with pytest.raises(train_mod.Preempted):
        run_train(tiny, tiny_shards, tmp_path / "run")
    monkeypatch.setattr(train_mod, "_PREEMPT_AT", -1)
    path = tmp_path / "run" / "train_state" / "state_000003.pt"
    return path, torch.load(path, weights_only=True)


def test_a_bf16_state_resumes_on_fp32_weights_from_the_master_copy(tiny, tiny_shards, tmp_path, monkeypatch):
    """A kernels-path state (bf16 weights, fp32 master copies) resumed on the torch path (fp32 weights, e.g. a
    node without CuPy) must continue from the fp32 master weights, not from the bf16-rounded ones."""
    path, ck = full_run_and_state_at_3(tiny, tiny_shards, tmp_path, monkeypatch)
    master = ck["optimizer"]["master"].clone()
    ck["model"] = {k: v.bfloat16() for k, v in ck["model"].items()}  # what the kernels path saves
    torch.save(ck, path)

    restored = {}
    real_restore = state_mod.TrainState.restore

    def spy(self, saved, world, **kw):
        real_restore(self, saved, world, **kw)
        restored["weights"] = torch.cat([p.detach().reshape(-1) for p in ordered_params(self.model)])

    monkeypatch.setattr(state_mod.TrainState, "restore", spy)
    run_train(tiny, tiny_shards, tmp_path / "run", resume=True)
    assert torch.equal(restored["weights"], master)
    assert trl_lines(tmp_path / "run") == trl_lines(tmp_path / "full")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_loading_a_crafted_checkpoint_runs_no_code(tiny, tiny_shards, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "gpt2pipe-checkpoint", "version": 2, "x": _Payload(marker)}, evil)
    with pytest.raises(Gpt2pipeError, match="not a checkpoint gpt2pipe can read"):
        checkpoint.read(evil)
    with pytest.raises(Gpt2pipeError, match="not a checkpoint gpt2pipe can read"):
        checkpoint.load_model(evil)
    for command in (["sample", "--checkpoint", str(evil)], ["export", "--checkpoint", str(evil), "--format", "hf",
                                                            "--out", str(tmp_path / "hf")],
                    ["evaluate", "--checkpoint", str(evil), "--skip-val", "--hellaswag", "demo"]):
        assert main(command) == 2, command  # one-line refusal from every command that loads a model
    # planted in a run folder as its newest training state: skipped, never executed
    state_dir = tmp_path / "run" / "train_state"
    state_dir.mkdir(parents=True)
    os.replace(evil, state_dir / "state_000009.pt")
    assert state_mod.newest_state(state_dir, say=lambda m: None) is None
    assert not marker.exists()


def test_a_state_saved_before_a_key_existed_resumes_at_that_keys_default(tiny, tiny_shards, tmp_path, monkeypatch):
    """States saved before train.optimizer, lr_schedule, document_aligned, … existed have no such key in their
    identity: at its default the key trains as before, so the run resumes; set otherwise, it is refused."""
    path, ck = full_run_and_state_at_3(tiny, tiny_shards, tmp_path, monkeypatch)
    for key in ("optimizer", "muon_learning_rate", "lr_schedule", "cooldown_frac", "document_aligned"):
        ck["identity"]["train"].pop(key, None)  # (at these values the identity leaves them out anyway)
    torch.save(ck, path)
    with pytest.raises(Gpt2pipeError, match=r"train.lr_schedule: 'cosine' -> 'wsd'"):
        run_train(with_train(tiny, lr_schedule="wsd"), tiny_shards, tmp_path / "run", resume=True)
    run_train(tiny, tiny_shards, tmp_path / "run", resume=True)
    assert trl_lines(tmp_path / "run") == trl_lines(tmp_path / "full")


def test_the_workflow_keeps_states_of_other_settings_aside_and_resumes_them_on_return(tiny, tiny_shards, tmp_path):
    """--retrain-on-change (what the workflow passes): a changed setting trains from step 0 beside the kept
    states, and going back resumes those (a finished run republishes its outputs, nothing is trained)."""
    run_dir = tmp_path / "run"
    run_train(tiny, tiny_shards, run_dir)
    first = log_of(run_dir)
    changed = with_train(tiny, learning_rate=0.001)
    run_train(changed, tiny_shards, run_dir, resume=True, retrain_on_change=True)
    second = log_of(run_dir)
    assert second != first and trl_lines(run_dir)[0].startswith("s:0 ")
    kept = list((run_dir / "train_state" / "other").iterdir())
    assert len(kept) == 1 and (kept[0] / "state_000006.pt").exists() and (kept[0] / "train.log").read_text() == first
    assert run_train(tiny, tiny_shards, run_dir, resume=True, retrain_on_change=True)["train_losses"] == []
    assert log_of(run_dir) == first  # the first run is back, its log and snapshots republished
    assert (run_dir / "train" / "model_000006.pt").exists()
    assert [(p / "train.log").read_text() for p in (run_dir / "train_state" / "other").iterdir()] == [second]
    # by hand (no --retrain-on-change) a changed setting is refused, naming every way out
    with pytest.raises(Gpt2pipeError, match=r"learning_rate: 0.003 -> 0.001\): restore them to resume it, set "
                                            r"another run_name .*--restart"):
        run_train(changed, tiny_shards, run_dir, resume=True)
