"""Data parallelism with ZeRO-1 on CPU (gloo): two processes launched by torchrun, as on a GPU node."""

import os
import re
import subprocess
import sys

import pytest
import yaml

from gpt2pipe.report import parse_log

pytestmark = pytest.mark.slow


def run(cfg_path, shards, run_dir, nproc=1, resume=False, preempt_at=None):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    cmd = [*launcher, "-m", "gpt2pipe", "train", "-c", str(cfg_path), "--shards", str(shards),
           "--run-dir", str(run_dir), "--no-progress", *(["--resume"] if resume else [])]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if preempt_at is not None:
        env["GPT2PIPE_PREEMPT_AT_STEP"] = str(preempt_at)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def assert_same_run(a, b, tol=2e-4):
    la, lb = parse_log(a / "train" / "train.log"), parse_log(b / "train" / "train.log")
    assert la.keys() == lb.keys()
    for key in la:
        assert [s for s, _ in la[key]] == [s for s, _ in lb[key]], key
        for (s, x), (_, y) in zip(la[key], lb[key]):
            assert abs(x - y) <= tol, (key, s, x, y)


@pytest.fixture
def setup(tiny, tiny_shards, tmp_path):
    raw = dict(tiny.raw, train=dict(tiny.raw["train"], num_threads=1))
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    single = tmp_path / "single"
    r = run(cfg_path, tiny_shards, single)
    assert r.returncode == 0, r.stderr[-2000:]
    return cfg_path, tiny_shards, single


def test_two_ranks_with_half_batches_match_one_process(setup, tmp_path):
    cfg_path, shards, single = setup
    r = run(cfg_path, shards, tmp_path / "two", nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_run(single, tmp_path / "two")
    held = re.findall(r"rank (\d) holds optimizer state for ([\d,]+) of ([\d,]+) parameters", r.stdout + r.stderr)
    assert held, r.stdout[-2000:]
    shard, total = (int(x.replace(",", "")) for x in held[0][1:])
    assert shard == -(-total // 2)  # each rank keeps half of the master weights and moments


def test_resume_across_process_counts(setup, tmp_path):
    cfg_path, shards, single = setup
    # 2 processes preempted at step 4, resumed on 1
    r = run(cfg_path, shards, tmp_path / "two_to_one", nproc=2, preempt_at=4)
    assert r.returncode != 0 and "state saved" in r.stderr, r.stderr[-2000:]
    r = run(cfg_path, shards, tmp_path / "two_to_one", nproc=1, resume=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert_same_run(single, tmp_path / "two_to_one")
    # 1 process preempted at step 4, resumed on 2
    r = run(cfg_path, shards, tmp_path / "one_to_two", nproc=1, preempt_at=4)
    assert r.returncode == 75, r.stderr[-2000:]
    r = run(cfg_path, shards, tmp_path / "one_to_two", nproc=2, resume=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert_same_run(single, tmp_path / "one_to_two")
