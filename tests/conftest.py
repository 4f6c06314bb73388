import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DEMO_TEXT = ROOT / "data" / "demo" / "tiny_shakespeare.txt"

# keep CPU tests quick and repeatable on the 2-core CI machine
torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


TEST_CONFIG = ROOT / ".test" / "config" / "config.yaml"  # the tiny run CI puts through the workflow


def tiny_config(tmp_path: Path, **sections) -> dict:
    """A config small enough to train in seconds on a CPU, over the first ~6K tokens of Tiny Shakespeare:
    .test/config/config.yaml, with its corpus copied into tmp_path and results under tmp_path/results."""
    import shutil

    import yaml

    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        shutil.copyfile(ROOT / ".test" / "corpus.txt", corpus)
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    cfg["results_dir"] = str(tmp_path / "results")
    cfg["data"]["paths"] = [str(corpus)]
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    return cfg


@pytest.fixture
def tiny(tmp_path):
    from gpt2pipe import config

    return config.from_dict(tiny_config(tmp_path))


def build_shards(cfg) -> Path:
    """Corpus and shards of a config, built with the real stage code."""
    from gpt2pipe.data.corpus import read_corpus, write_corpus
    from gpt2pipe.data.tokenize import tokenize_to_shards

    write_corpus(cfg.data, cfg.data_dir / "corpus")
    tokenize_to_shards(read_corpus(cfg.data_dir / "corpus"), cfg.data, cfg.data_dir / "shards")
    return cfg.data_dir / "shards"


@pytest.fixture
def tiny_shards(tiny):
    return build_shards(tiny)


def crash_then_resume(cfg, shards, run_dir, monkeypatch, at_step: int = 4) -> None:
    """Train until an exception at `at_step` (a simulated crash), then train again with resume."""
    from gpt2pipe.train import loop as train_mod

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


def fineweb_parquet(path: Path, texts: list[str], row_group_size: int | None = None) -> Path:
    """A parquet file with FineWeb's columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({
        "text": texts, "id": [f"<urn:uuid:{i}>" for i in range(n)], "dump": ["CC-MAIN-2024-10"] * n,
        "url": [f"https://example.org/{i}" for i in range(n)], "date": ["2024-02-20"] * n,
        "file_path": ["s3://x"] * n, "language": ["en"] * n, "language_score": [0.9] * n, "token_count": [3] * n,
    }), path, row_group_size=row_group_size)
    return path


def shakespeare_docs(n_files: int, docs_per_file: int) -> list[list[str]]:
    """Real text cut into documents (Tiny Shakespeare's speeches), spread over n_files."""
    speeches = [s.strip() for s in DEMO_TEXT.read_text().split("\n\n") if s.strip()]
    return [speeches[i * docs_per_file:(i + 1) * docs_per_file] for i in range(n_files)]


def hub_cache(cache: Path, repo: str, files: dict[str, Path], commit: str = "c0ffee" * 6 + "c0ff") -> str:
    """Lay out huggingface_hub's cache for a dataset repo at one commit (blobs named by sha256, snapshot
    symlinks, refs/main), so the real hf_hub_download/snapshot_download serve it with HF_HUB_OFFLINE=1."""
    import hashlib

    base = cache / f"datasets--{repo.replace('/', '--')}"
    (base / "blobs").mkdir(parents=True, exist_ok=True)
    (base / "refs").mkdir(exist_ok=True)
    (base / "refs" / "main").write_text(commit)
    for name, src in files.items():
        data = src.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        (base / "blobs" / sha).write_bytes(data)
        link = base / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(base / "blobs" / sha, link.parent))
    return commit


def run_train_process(cfg_path, shards, run_dir, nproc=1, resume=False, preempt_at=None, zero=None, sets=()):
    """`gpt2pipe train` in a fresh process (under torchrun for nproc > 1: gloo on CPU, as on a GPU node);
    preempt_at: the step at which the run saves and stops as if preempted (GPT2PIPE_PREEMPT_AT_STEP)."""
    import subprocess
    import sys

    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    cmd = [*launcher, "-m", "gpt2pipe", "train", "-c", str(cfg_path), "--shards", str(shards),
           "--run-dir", str(run_dir), "--no-progress", *(["--resume"] if resume else []),
           *(["--set", f"train.zero={zero}"] if zero is not None else []),
           *[x for kv in sets for x in ("--set", kv)]]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if preempt_at is not None:
        env["GPT2PIPE_PREEMPT_AT_STEP"] = str(preempt_at)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def assert_same_run(a, b, tol=2e-4):
    """Two runs' llm.c logs hold the same steps and values within tol."""
    from gpt2pipe.report import parse_log

    la, lb = parse_log(a / "train" / "train.log"), parse_log(b / "train" / "train.log")
    assert la.keys() == lb.keys()
    for key in la:
        assert [s for s, _ in la[key]] == [s for s, _ in lb[key]], key
        for (s, x), (_, y) in zip(la[key], lb[key]):
            assert abs(x - y) <= tol, (key, s, x, y)
