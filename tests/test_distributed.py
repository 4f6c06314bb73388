"""Data parallelism with ZeRO-1/2/3 on CPU (gloo): two processes launched by torchrun, as on a GPU node."""

import re

import pytest
import yaml

from conftest import assert_same_run, run_train_process as run

pytestmark = pytest.mark.slow


@pytest.fixture
def setup(tiny, tiny_shards, tmp_path):
    # 20 steps x 2 samples: past shard boundaries and into the second epoch (37 samples per epoch)
    raw = dict(tiny.raw, train=dict(tiny.raw["train"], num_threads=1, max_steps=20, checkpoint_every=10))
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
    r = run(cfg_path, shards, tmp_path / "two_to_one", nproc=2, preempt_at=13)
    assert r.returncode != 0 and "state saved" in r.stderr, r.stderr[-2000:]
    r = run(cfg_path, shards, tmp_path / "two_to_one", nproc=1, resume=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert_same_run(single, tmp_path / "two_to_one")
    # 1 process preempted at step 4, resumed on 2
    r = run(cfg_path, shards, tmp_path / "one_to_two", nproc=1, preempt_at=13)
    assert r.returncode == 75, r.stderr[-2000:]
    r = run(cfg_path, shards, tmp_path / "one_to_two", nproc=2, resume=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert_same_run(single, tmp_path / "one_to_two")


def _batches(step, rank, micro=0):
    import torch

    gen = torch.Generator().manual_seed(100 * step + 10 * micro + rank)  # every rank its own data
    data = torch.randint(0, 50257, (2, 9), generator=gen)
    return data[:, :-1], data[:, 1:]


def _zero_worker(rank, world_size, init_file, out_dir, zero):
    import torch
    import torch.distributed as dist

    from gpt2pipe.config import ModelConfig
    from gpt2pipe.distributed import World
    from gpt2pipe.model.gpt import GPT
    from gpt2pipe.ops.flat_adamw import FlatAdamW

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=8))
    # small buckets: parameters spread over many reduce-scatters, some bucket sizes not divisible by 2
    opt = FlatAdamW(model, lr=1e-2, dtype=torch.float32, world=World(rank, world_size), bucket_elements=5000,
                    zero=zero)
    left = []  # ZeRO-2: gradients still held by parameters after each backward
    for step in range(3):
        for micro in range(2):  # accumulation: ZeRO-2 reduce-scatters both micro-steps, ZeRO-1 the last
            if micro == 1:
                opt.overlap_next_backward()  # buckets reduce-scattered from the backward's gradient hooks
            x, y = _batches(step, rank, micro)
            (model(x, y)[1] / 2).backward()
            left.append(sum(p.grad is not None for p in model.parameters()))
        opt.step(1e-2)
        opt.zero_grad()
    state = opt.gathered_state()  # process 0 alone receives the whole-model state
    torch.save({"params": {k: v.clone() for k, v in model.state_dict().items()}, "state": state,
                "buckets": len(opt.buckets), "shard": opt.shard_size(), "left": left,
                "full_grads": opt.grads.numel()}, f"{out_dir}/zero_{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize("zero", [1, 2])
def test_zero_buckets_match_one_process(tmp_path, zero):
    """ZeRO-1 and ZeRO-2 with many buckets (reduce-scatters launched from gradient hooks during a real
    backward) and 2 accumulation steps equal plain AdamW on the mean gradient; the gathered state lands on
    process 0 only. ZeRO-2 keeps no full gradient buffer: no parameter holds a gradient after a backward."""
    import torch
    import torch.multiprocessing as mp

    from gpt2pipe.config import ModelConfig
    from gpt2pipe.model.gpt import GPT
    from gpt2pipe.ops.flat_layout import ordered_params

    mp.spawn(_zero_worker, args=(2, str(tmp_path / "init"), str(tmp_path), zero), nprocs=2, join=True)
    got = torch.load(tmp_path / "zero_0.pt", weights_only=True)
    other = torch.load(tmp_path / "zero_1.pt", weights_only=True)
    assert got["buckets"] >= 4  # the embedding alone, the other weights over several, the rest
    assert other["state"] is None and got["state"]["t"] == 3
    if zero == 2:
        assert got["left"] == [0] * 6 and got["full_grads"] == 0
    else:
        assert min(got["left"]) > 0 and got["full_grads"] >= got["shard"] * 2
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=8))
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    for step in range(3):
        # the mean of the ranks' and micro-steps' gradients
        loss = sum(model(*_batches(step, r, micro))[1] for r in range(2) for micro in range(2)) / 4
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
    for k, v in model.state_dict().items():
        # 1e-4 = 1% of one update at lr 1e-2: Adam's normalisation magnifies fp32 summation-order differences
        assert torch.allclose(got["params"][k], v, atol=1e-4), k
        assert torch.equal(got["params"][k], other["params"][k]), k  # weights all-gathered to every rank
    master = torch.cat([p.detach().reshape(-1) for p in ordered_params(model)])
    assert torch.allclose(got["state"]["master"], master, atol=1e-4)
    assert got["shard"] * 2 >= sum(p.numel() for p in set(model.parameters()))


@pytest.mark.parametrize("zero", [2, 3])
def test_zero_stages_match_one_process(setup, tmp_path, zero):
    """ZeRO-2 (sharded gradients) and ZeRO-3 (FSDP2) on 2 processes: the same per-step losses as 1 process."""
    cfg_path, shards, single = setup
    r = run(cfg_path, shards, tmp_path / "two", nproc=2, zero=zero)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"ZeRO-{zero}" in r.stdout + r.stderr, (r.stdout + r.stderr)[-2000:]
    assert_same_run(single, tmp_path / "two")


def test_resume_across_zero_stages(setup, tmp_path):
    """A state saved under ZeRO-3 on 2 processes resumes under ZeRO-1 on 1, and a ZeRO-1 state on 2
    processes under ZeRO-3 on 2: both reproduce the uninterrupted run."""
    cfg_path, shards, single = setup
    r = run(cfg_path, shards, tmp_path / "three_to_one", nproc=2, preempt_at=13, zero=3)
    assert r.returncode != 0 and "state saved" in r.stderr, r.stderr[-2000:]
    r = run(cfg_path, shards, tmp_path / "three_to_one", nproc=1, resume=True, zero=1)
    assert r.returncode == 0, r.stderr[-2000:]
    assert_same_run(single, tmp_path / "three_to_one")
    r = run(cfg_path, shards, tmp_path / "one_to_three", nproc=2, preempt_at=7, zero=1)
    assert r.returncode != 0 and "state saved" in r.stderr, r.stderr[-2000:]
    r = run(cfg_path, shards, tmp_path / "one_to_three", nproc=2, resume=True, zero=3)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ZeRO-3" in r.stdout + r.stderr
    assert_same_run(single, tmp_path / "one_to_three")


@pytest.mark.gpu
@pytest.mark.parametrize("ops, zero, tol", [("kernels", 2, 2e-3), ("torch", 3, 2e-2)])
def test_zero_stages_on_two_gpus(setup, tmp_path, ops, zero, tol):
    """On 2 GPUs (NCCL): ZeRO-2 on the kernels path and ZeRO-3 (FSDP2, bf16 gathered weights) on the torch
    path give the per-step losses of ZeRO-1 on the same path."""
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    cfg_path, shards, _ = setup
    sets = ("train.device=cuda", f"train.ops={ops}")
    r = run(cfg_path, shards, tmp_path / "one", nproc=2, zero=1, sets=sets)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run(cfg_path, shards, tmp_path / "other", nproc=2, zero=zero, sets=sets)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"ZeRO-{zero}" in r.stdout + r.stderr
    assert_same_run(tmp_path / "one", tmp_path / "other", tol=tol)
