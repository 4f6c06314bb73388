import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DEMO_TEXT = ROOT / "data" / "demo" / "tiny_shakespeare.txt"
SHARED = ROOT.parent / "shared" / "data"  # the development checkout's shared data, when present

# keep CPU tests quick and repeatable on the 2-core CI machine
torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def tiny_config(tmp_path: Path, **sections) -> dict:
    """A config small enough to train in seconds on a CPU, over the first ~6K tokens of Tiny Shakespeare."""
    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        corpus.write_text(DEMO_TEXT.read_text()[:25_000])
    cfg = {
        "run_name": "tiny",
        "results_dir": str(tmp_path / "results"),
        "data": {"name": "tiny", "paths": [str(corpus)], "shard_tokens": 2048, "val_tokens": 1024, "workers": 1},
        "model": {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32},
        "train": {"seq_len": 32, "micro_batch_size": 4, "total_batch_tokens": 256, "max_steps": 6,
                  "learning_rate": 0.003, "warmup_steps": 2, "val_every": 3, "checkpoint_every": 3,
                  "device": "cpu"},
        "eval": {"val_tokens": 256, "hellaswag": "demo", "hellaswag_max_examples": 8, "batch_size": 8,
                 "sample_tokens": 8},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    return cfg


@pytest.fixture
def tiny(tmp_path):
    from gpt2pipe import config

    return config.from_dict(tiny_config(tmp_path))


def build_shards(cfg) -> Path:
    """Corpus and shards of a config, built with the real stage code."""
    from gpt2pipe.corpus import read_corpus, write_corpus
    from gpt2pipe.shards import tokenize_to_shards

    write_corpus(cfg.data, cfg.data_dir / "corpus")
    tokenize_to_shards(read_corpus(cfg.data_dir / "corpus"), cfg.data, cfg.data_dir / "shards")
    return cfg.data_dir / "shards"


@pytest.fixture
def tiny_shards(tiny):
    return build_shards(tiny)


def crash_then_resume(cfg, shards, run_dir, monkeypatch, at_step: int = 4) -> None:
    """Train until an exception at `at_step` (a simulated crash), then train again with resume."""
    from gpt2pipe import train as train_mod

    real_lr = train_mod.lr_at

    def crash(step, t):
        if step == at_step:
            raise RuntimeError("simulated crash")
        return real_lr(step, t)

    with monkeypatch.context() as m:
        m.setattr(train_mod, "lr_at", crash)
        with pytest.raises(RuntimeError, match="simulated crash"):
            train_mod.train(cfg, shards, run_dir, progress=False)
    # the job's outputs may be deleted by the workflow manager; the saved state is enough
    (run_dir / "train" / "model_000003.pt").unlink()
    train_mod.train(cfg, shards, run_dir, resume=True, progress=False)
