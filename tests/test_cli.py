import json
import subprocess
import sys

import yaml

from gpt2pipe.cli.main import main

from conftest import tiny_config


def gpt2pipe(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "gpt2pipe", *args], capture_output=True, text=True, cwd=cwd)


def test_help_lists_every_stage():
    r = gpt2pipe("--help")
    assert r.returncode == 0
    for cmd in ("corpus", "tokenize", "hellaswag", "train", "evaluate", "report", "config"):
        assert cmd in r.stdout
    r = gpt2pipe("train", "--help")
    assert "--resume" in r.stdout and "--set KEY=VALUE" in r.stdout


def test_bad_input_is_one_line_with_exit_2(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  max_step: 5\n")
    r = gpt2pipe("config", "-c", str(cfg))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0
    assert "c.yaml: train: Additional properties are not allowed ('max_step' was unexpected)" in r.stderr
    r = gpt2pipe("tokenize", "--corpus", str(tmp_path / "missing"), "--out", str(tmp_path / "s"))
    assert r.returncode == 2 and "missing: no docs_*.parquet files" in r.stderr
    r = gpt2pipe("train", "--shards", str(tmp_path / "nowhere"))
    assert r.returncode == 2 and "nowhere: no shards.json" in r.stderr


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
