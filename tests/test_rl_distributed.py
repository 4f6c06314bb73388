"""2 gloo processes equal 1 process with accumulation: the RL stage (PPO and GRPO) launched by torchrun on the
CPU, as on a GPU node, logs the same steps and ends with the same weights as one process whose micro-batches
are the same size (forward_batch 4: one process runs two a mini-batch of 8, each of two processes one), and as
one process without accumulation (forward_batch 8).

Tolerance: everything is fp32 and the runs differ only in summation order (matmuls over other batch shapes,
gradients summed over two processes then averaged, micro-batch parts of a loss added in another order), each
~1e-7 relative (fp32's epsilon). The samples, hence the rewards and response lengths, are the same (1e-5:
rl.log's 6 digits). Training then magnifies the round-off: AdamW's normalisation turns a gradient's relative
error (large where its terms cancel) into a weight's, and each step builds on the last. Measured here, with
1 process with and without accumulation as far apart as 1 and 2 processes: step 0's logged values within
1e-6 relative, later steps' within 4e-4, weights within 2e-5 (of a movement of 0.035). Hence 1e-4 at step 0,
2e-3 later, 1e-4 on weights. Anything that differs for real moves more: before processes shared their noise
and batch, step 0's policy loss was 0.0052 vs 0.0272, approx-KL 0.054 vs 0.045, reward std 0.79 vs 0.61.
"""

import os
import subprocess
import sys

import pytest
import torch
import yaml

from gpt2pipe.model import checkpoint
from test_rl import REWARDS, peaked_policy, rl_log
from conftest import tiny_config

pytestmark = pytest.mark.slow

STEPS = 3
FIRST, LATER, WTOL = 1e-4, 2e-3, 1e-4
TIMED = {"rollout_s", "update_s", "samples_per_s"}  # everything else is a function of the seed
SAMPLED = {"step", "reward_mean", "reward_std", "response_length", "kl_coef"}  # of the samples alone


def _rl(cfg_path, run_dir, nproc, sets=()):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    cmd = [*launcher, "-m", "gpt2pipe", "rl", "-c", str(cfg_path), "--run-dir", str(run_dir), "--no-progress",
           *[x for kv in sets for x in ("--set", kv)]]
    return subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                          timeout=600)


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_two_processes_equal_one_with_accumulation(tmp_path, algorithm):
    (tmp_path / "rewards.py").write_text(REWARDS)
    texts = ["To be, or not to be", "Friends, Romans, countrymen", "Now is the winter", "O Romeo, Romeo",
             "All the world's a stage", "Shall I compare thee", "If music be the food", "The quality of mercy"]
    (tmp_path / "prompts.jsonl").write_text("".join(f'{{"prompt": "{t}"}}\n' for t in texts * 4))
    raw = tiny_config(tmp_path, model={"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 64})
    # prompts of several lengths (left padding), rewards whitened, adaptive KL, two epochs of two mini-batches
    raw["rl"] = {"algorithm": algorithm, "init_from": str(peaked_policy(tmp_path / "init.pt")),
                 "prompts": str(tmp_path / "prompts.jsonl"), "reward": f"{tmp_path / 'rewards.py'}:count_love",
                 "steps": STEPS, "batch_size": 16, "mini_batch_size": 8, "forward_batch": 4, "max_new_tokens": 8,
                 "prompt_tokens": 8, "eval_prompts": 0, "checkpoint_every": STEPS, "learning_rate": 3e-3,
                 "kl_coef": 0.1, "kl_target": 1.0, "ppo_epochs": 2, "whiten_rewards": True, "grpo_group_size": 4,
                 "grpo_iterations": 2}
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    runs = {"two": (2, ()), "one": (1, ()), "one, no accumulation": (1, ("rl.forward_batch=8",))}
    for name, (nproc, sets) in runs.items():
        r = _rl(cfg_path, tmp_path / name, nproc, sets)
        assert r.returncode == 0, r.stderr[-3000:]
    two = rl_log(tmp_path / "two")
    assert [r["step"] for r in two] == list(range(STEPS))
    assert len({r["reward_mean"] for r in two}) > 1  # the policy moves: the steps are not all alike
    wb = checkpoint.read(tmp_path / "two" / "rl" / f"model_{STEPS:06d}.pt")["model"]
    init = checkpoint.read(tmp_path / "init.pt")["model"]
    assert any(not torch.equal(wb[k], init[k]) for k in wb)  # trained
    for name in ("one", "one, no accumulation"):
        one = rl_log(tmp_path / name)
        assert [r["step"] for r in one] == list(range(STEPS))
        for a, b in zip(one, two):
            for key in a.keys() - TIMED:
                tol = 1e-5 if key in SAMPLED else FIRST if a["step"] == 0 else LATER
                assert abs(a[key] - b[key]) <= tol * max(1.0, abs(a[key])), (name, a["step"], key, a[key], b[key])
        wa = checkpoint.read(tmp_path / name / "rl" / f"model_{STEPS:06d}.pt")["model"]
        for k in wa:
            assert torch.allclose(wa[k], wb[k], rtol=0, atol=WTOL), (name, k, (wa[k] - wb[k]).abs().max().item())


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_a_row_samples_alike_in_any_share_of_the_batch(temperature, device):
    """sample(rows=, global_batch=): the halves of a batch sampled apart (as two processes do) give the
    tokens of the whole batch sampled at once (on CUDA through the recorded decode graph, whose noise buffer
    gets its rows of the whole batch's noise before each replay)."""
    from gpt2pipe.config import ModelConfig
    from gpt2pipe.model.decode import sample
    from gpt2pipe.model.gpt import GPT

    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=32)).to(device).eval()
    prompts = [[1, 2, 3], [4], [5, 6], [7, 8, 9, 10], [11], [12, 13]]
    gen = lambda: torch.Generator(device).manual_seed(7)  # noqa: E731
    whole = sample(model, prompts, 6, temperature, None, gen())
    parts = [sample(model, prompts[r], 6, temperature, None, gen(), rows=r, global_batch=6)
             for r in (slice(0, 3), slice(3, 6))]
    assert torch.equal(torch.cat([p.tokens for p in parts]), whole.tokens)
    with pytest.raises(ValueError, match="rows"):
        sample(model, prompts[:2], 6, 1.0, None, gen(), rows=slice(0, 3), global_batch=6)


def test_shares_cover_the_batch_and_every_process_gets_rows():
    from types import SimpleNamespace

    from gpt2pipe import Gpt2pipeError
    from gpt2pipe.distributed import World
    from gpt2pipe.rl.shard import check, share

    rows = [list(range(10))[share(10, World(r, 3))] for r in range(3)]
    assert rows == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    check(SimpleNamespace(batch_size=16, mini_batch_size=8), World(0, 8))
    with pytest.raises(Gpt2pipeError, match="a mini-batch of 2 responses .* cannot be shared by 4 processes"):
        check(SimpleNamespace(batch_size=18, mini_batch_size=8), World(0, 4))  # the last mini-batch: 2 rows
