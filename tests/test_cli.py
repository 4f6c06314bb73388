import argparse
import json
import re
import subprocess
import sys

import pytest

import yaml

from gpt2pipe.cli import build_parser, main

from conftest import tiny_config


def gpt2pipe(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "gpt2pipe", *args], capture_output=True, text=True, cwd=cwd)


# what each subcommand must offer, written out here so that removing a subcommand or option fails a test
OPTIONS = {
    "corpus": ["--out", "--configfile", "--set KEY=VALUE"],
    "tokenize": ["--corpus", "--out"],
    "fineweb": ["{list,download}", "--listing", "--file NAME", "--all"],
    "encode": ["--input", "--out", "--max-tokens"],
    "shard": ["tokens", "--out"],
    "hellaswag": ["--source", "--out"],
    "train": ["--shards", "--run-dir", "--resume", "--restart", "--retrain-on-change", "--no-progress",
              "--set KEY=VALUE"],
    "rl": ["--shards", "--run-dir", "--resume", "--restart", "--retrain-on-change", "--no-progress",
           "--set KEY=VALUE"],
    "reward-model": ["--shards", "--run-dir", "--no-progress", "--set KEY=VALUE"],
    "evaluate": ["--checkpoint", "--shards", "--hellaswag", "--skip-val", "--own-shape", "--out"],
    "sample": ["--checkpoint", "--prompt", "--max-new-tokens", "--min-tokens N", "--temperature", "--top-k",
               "--num-samples", "--seed", "--device", "--out"],
    "report": ["--notebook", "--train-log", "--evals", "--out", "--notebook-out", "--metrics", "--rl-log",
               "--rl-evaluated", "--rl-samples"],
    "config": ["--describe", "--configfile"],
    "export": ["--checkpoint", "--format", "--dtype", "--out"],
    "import": ["source", "--out"],
    "bench": ["--size", "--seq-len", "--total-batch", "--modes", "--micro-batch", "--steps", "--profile"],
    "bench-tokenize": ["parquet", "--workers", "--sample-text", "--sample-mb"],
}


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_parser_has_every_subcommand():
    assert sorted(subcommands()) == sorted(OPTIONS)


def test_top_level_help_lists_each_subcommand_with_its_summary():
    r = gpt2pipe("--help")
    assert r.returncode == 0
    listed = re.findall(r"^    (\S+)", r.stdout, re.MULTILINE)  # argparse's command list, not the description
    assert listed == list(subcommands())
    for name, sub in subcommands().items():
        assert " ".join(sub.description.split()[:3]) in " ".join(r.stdout.split()), name


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_each_subcommand_help_shows_its_own_options(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: gpt2pipe {name} ")
    for option in OPTIONS[name]:
        assert option in out, (name, option)
    parser = subcommands()[name]
    assert parser.description.split("\n")[0][:40] in " ".join(out.split())
    for action in parser._actions:  # and every option the parser has is described
        for flag in action.option_strings:
            assert flag in out, (name, flag)


def test_resume_and_restart_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--resume", "--restart"])
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_train_restart_reaches_the_training_loop(monkeypatch, tmp_path):
    import gpt2pipe.train.loop

    seen = {}
    monkeypatch.setattr(gpt2pipe.train.loop, "train", lambda cfg, shards, run_dir, **kw: seen.update(kw))
    assert main(["train", "--restart", "--shards", str(tmp_path), "--run-dir", str(tmp_path)]) == 0
    assert seen == {"resume": False, "restart": True, "progress": True, "retrain_on_change": False}


def test_describe_into_a_closed_pipe_is_quiet():
    """`gpt2pipe config --describe | head`: the reader leaves early; no BrokenPipeError traceback."""
    p = subprocess.Popen([sys.executable, "-m", "gpt2pipe", "config", "--describe"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    p.stdout.close()  # before the child writes a byte: its first write meets a closed pipe
    err = p.stderr.read()
    assert p.wait() == 141 and err == ""


def test_report_creates_a_missing_output_folder(tmp_path):
    """papermill refuses an output folder that does not exist with a traceback; `report` makes the folder."""
    nb = tmp_path / "nb.ipynb"
    nb.write_text(json.dumps({
        "nbformat": 4, "nbformat_minor": 5, "metadata": {"kernelspec": {"name": "python3", "language": "python",
                                                                       "display_name": "Python 3"}},
        "cells": [{"cell_type": "code", "id": "p", "metadata": {"tags": ["parameters"]}, "execution_count": None,
                   "outputs": [], "source": "output_png = ''"}]}))
    ev = tmp_path / "step_000001.json"
    ev.write_text(json.dumps({"step": 1, "val_loss": 5.0}))
    log = tmp_path / "train.log"
    log.write_text("s:0 tel:10.9\ns:0 trl:10.9 lr:0.0001 norm:1.0\ns:1 tel:5.0\n")
    out = tmp_path / "new" / "folder" / "output.png"
    r = gpt2pipe("report", "--notebook", str(nb), "--evals", str(ev), "--train-log", str(log), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert (out.parent / "report.ipynb").is_file() and (out.parent / "metrics.tsv").is_file()
    (tmp_path / "file").write_text("")
    r = gpt2pipe("report", "--notebook", str(nb), "--evals", str(ev), "--train-log", str(log),
                 "--out", str(tmp_path / "file" / "o.png"))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "file: not a folder" in r.stderr


def test_bad_input_is_one_line_with_exit_2(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  max_step: 5\n")
    r = gpt2pipe("config", "-c", str(cfg))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0
    assert "c.yaml: train.max_step: unknown key; did you mean train.max_steps?" in r.stderr
    r = gpt2pipe("tokenize", "--corpus", str(tmp_path / "missing"), "--out", str(tmp_path / "s"))
    assert r.returncode == 2 and "missing: no docs_*.parquet files" in r.stderr
    r = gpt2pipe("train", "--shards", str(tmp_path / "nowhere"))
    assert r.returncode == 2 and "nowhere: shards folder not found" in r.stderr


def test_stages_run_from_the_cli(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(tmp_path)))
    assert main(["config", "-c", str(cfg)]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["model"]["padded_vocab_size"] == 50304
    for stage in ("corpus", "tokenize", "hellaswag"):
        assert main([stage, "-c", str(cfg)]) == 0
    assert main(["train", "-c", str(cfg), "--no-progress"]) == 0
    ck = tmp_path / "results" / "tiny" / "train" / "model_000003.pt"
    hs = tmp_path / "results" / "data" / "hellaswag" / "hellaswag_demo.bin"
    capsys.readouterr()
    assert main(["evaluate", "-c", str(cfg), "--checkpoint", str(ck), "--hellaswag", str(hs)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["step"] == 3 and result["hellaswag_examples"] == 8
    assert (tmp_path / "results" / "tiny" / "eval" / "step_000003.json").exists()
