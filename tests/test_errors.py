"""Every user error is one line that names the file (or --set / --config) and the key, with no Python frames."""

import json
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from gpt2pipe.cli import main


def one_line(text: str) -> str:
    """The single line of an error output; fails on a traceback, a frame or a second line."""
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text and 'File "' not in text, text
    return lines[0]


def error_of(capsys, *argv) -> str:
    """gpt2pipe's one-line error for argv (through main, as the console script runs it)."""
    assert main(list(argv)) == 2
    return one_line(capsys.readouterr().err)


# --- config files and overrides --------------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("train:\n  learnng_rate: 0.1\n", "train.learnng_rate: unknown key; did you mean train.learning_rate?"),
    ("trian:\n  max_steps: 3\n", "trian: unknown key; did you mean train?"),
    ("train:\n  n_layer: 2\n", "train.n_layer: unknown key; did you mean model.n_layer?"),
    ("train:\n  ops: kernel\n", "train.ops: 'kernel' is not one of ['torch', 'compile', 'kernels']; "
                                "did you mean 'kernels'?"),
    ("train:\n  max_steps: -3\n", "train.max_steps: -3 is less than the minimum of 1"),
])
def test_config_error_names_the_file_and_the_key(tmp_path, capsys, text, message):
    path = tmp_path / "my.yaml"
    path.write_text(text)
    assert error_of(capsys, "config", "-c", str(path)) == f"gpt2pipe config: error: {path}: {message}"


def test_an_override_error_names_the_override(capsys):
    assert error_of(capsys, "config", "--set", "train.max_step=5") == \
        "gpt2pipe config: error: --set train.max_step=5: train.max_step: unknown key; did you mean train.max_steps?"


@pytest.mark.parametrize("name, content, why", [
    ("missing.txt", None, "not found"),
    ("empty.txt", "", "holds no text (empty, or only whitespace)"),
    ("blank.txt", "\n\n   \n", "holds no text (empty, or only whitespace)"),
    ("latin1.txt", b"caf\xe9\n", "not UTF-8 text (invalid continuation byte)"),
])
def test_config_checks_that_the_corpus_files_hold_text(tmp_path, capsys, name, content, why):
    corpus = tmp_path / name
    if isinstance(content, bytes):
        corpus.write_bytes(content)
    elif content is not None:
        corpus.write_text(content)
    path = tmp_path / "my.yaml"
    path.write_text(f"data:\n  paths: [{json.dumps(str(corpus))}]\n")
    assert error_of(capsys, "config", "-c", str(path)) == f"gpt2pipe config: error: {path}: data.paths: {corpus}: {why}"
    assert error_of(capsys, "config", "--set", f"data.paths=[{json.dumps(str(corpus))}]").startswith(
        "gpt2pipe config: error: --set data.paths=")


def test_snakemake_config_errors_are_one_line_naming_the_file_or_the_option(tmp_path):
    """The workflow validates the config as it parses: one line, not Snakemake's WorkflowError with its frame."""
    path = tmp_path / "my.yaml"
    path.write_text("train:\n  learnng_rate: 0.1\n")
    smk = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "workflow" / "Snakefile"), "--cores", "1",
           "--directory", str(tmp_path), "--dry-run"]
    r = subprocess.run([*smk, f"--configfile={path}"], capture_output=True, text=True)
    assert r.returncode == 1
    assert f"{path}: train.learnng_rate: unknown key; did you mean train.learning_rate?" in r.stderr
    assert "Traceback" not in r.stderr and 'File "' not in r.stderr and "WorkflowError" not in r.stderr
    path.write_text("train:\n  max_steps: 5\n")
    r = subprocess.run([*smk, "--config", "train={max_step: 5}", f"--configfile={path}"], capture_output=True,
                       text=True)
    assert r.returncode == 1 and "--config: train.max_step: unknown key; did you mean train.max_steps?" in r.stderr
    assert 'File "' not in r.stderr


# --- checkpoints ---------------------------------------------------------------------------------------

class Opaque:  # an object torch.load(weights_only=True) refuses to unpickle
    pass


@pytest.mark.parametrize("make, why", [
    (lambda p: p.write_bytes(bytes(range(256)) * 4), "not a zip archive as torch.save writes"),
    (lambda p: p.write_text("hello, I am text\n"), "a text file, not one torch.save wrote"),
    (lambda p: p.write_bytes(b""), "an empty file"),
    (lambda p: torch.save({"a": Opaque()}, p), "it holds Python objects (test_errors.Opaque) besides tensors"),
    (lambda p: torch.save({"x": torch.zeros(2)}, p), "a torch file without gpt2pipe's format tag"),
    (lambda p: torch.save({"format": "gpt2pipe-checkpoint", "version": 1}, p), "format version 1"),
])
@pytest.mark.parametrize("command", [["sample"], ["export", "--format", "hf", "--out", "hf"],
                                     ["evaluate", "--skip-val"]])
def test_a_file_that_is_no_checkpoint_is_refused_in_one_line(tmp_path, capsys, make, why, command):
    path = tmp_path / "model.pt"
    make(path)
    line = error_of(capsys, command[0], "--checkpoint", str(path), *command[1:])
    assert line.startswith(f"gpt2pipe {command[0]}: error: {path}: not a checkpoint gpt2pipe can read (")
    assert why in line
    assert "weights_only" not in line and "KeyError" not in line  # torch's advice is never passed on


def test_the_cli_process_prints_no_torch_advice(tmp_path):
    path = tmp_path / "random.pt"
    path.write_bytes(bytes(range(256)) * 64)
    r = subprocess.run([sys.executable, "-m", "gpt2pipe", "sample", "--checkpoint", str(path)], capture_output=True,
                       text=True)
    assert r.returncode == 2 and "not a checkpoint gpt2pipe can read" in one_line(r.stderr)


def test_evaluate_without_a_config_reads_the_shape_from_the_checkpoint(tmp_path, capsys):
    from gpt2pipe.config import ModelConfig
    from gpt2pipe.eval import hellaswag
    from gpt2pipe.model import checkpoint
    from gpt2pipe.model.gpt import GPT

    small = ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=64)
    checkpoint.save(tmp_path / "model.pt", GPT(small), 3)
    out = tmp_path / "result.json"
    assert main(["evaluate", "--checkpoint", str(tmp_path / "model.pt"), "--skip-val", "--hellaswag",
                 str(hellaswag.demo_jsonl()), "--set", "eval.hellaswag_max_examples=2", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["step"] == 3
    # with -c the checkpoint must match the config's model, as the workflow's evaluate jobs expect
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {n_layer: 2, n_head: 2, n_embd: 32, block_size: 64}\ntrain: {seq_len: 64}\n")
    capsys.readouterr()
    assert "another model shape (checkpoint vs config: n_layer 1 != 2)" in error_of(
        capsys, "evaluate", "-c", str(cfg), "--checkpoint", str(tmp_path / "model.pt"), "--skip-val")


# --- small things --------------------------------------------------------------------------------------

def test_token_counts_read_at_any_size():
    from gpt2pipe.files import count_text

    assert [count_text(n) for n in (600, 61_440, 1_572_864, 10_000_000_000)] == ["600", "61.4K", "1.57M", "10B"]


def test_every_sample_option_has_help(capsys):
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    text = capsys.readouterr().out
    for option, words in (("--num-samples", "how many samples"), ("--seed", "seed of the random sampling"),
                          ("--device", "a CUDA GPU if there is one")):
        assert option in text and words in " ".join(text.split()), option
