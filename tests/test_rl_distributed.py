"""2 gloo processes equal 1 process with accumulation: the RL stage (PPO and GRPO) launched by torchrun on the
CPU, as on a GPU node, logs the same steps and ends with the same weights as one process whose micro-batches
are the same size (forward_batch 4: one process runs two a mini-batch of 8, each of two processes one).

Tolerance: everything is fp32 and the two runs differ only in summation order (matmuls over other batch
shapes, gradients summed over two processes then averaged, micro-batch contributions added in another order),
each ~1e-7 relative (fp32's epsilon). Over a few dozen AdamW steps (eps 1e-5, so an update is at most the
learning rate 3e-3 in size) such differences grow to ~1e-5 in logged values and weights; 1e-4 is well below
the effect of anything that differs for real (one other sample, prompt, mini-batch or normalisation moves the
logged losses by ~1e-2 and the weights by ~1e-3).
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
TOL = 1e-4
# the column of samples/s and the timings differ; everything else is a function of the seed
TIMED = {"rollout_s", "update_s", "samples_per_s"}


def _rl(cfg_path, run_dir, nproc):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    cmd = [*launcher, "-m", "gpt2pipe", "rl", "-c", str(cfg_path), "--run-dir", str(run_dir), "--no-progress"]
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
    runs = {}
    for nproc in (1, 2):
        r = _rl(cfg_path, tmp_path / f"run{nproc}", nproc)
        assert r.returncode == 0, r.stderr[-3000:]
        runs[nproc] = tmp_path / f"run{nproc}"
    one, two = rl_log(runs[1]), rl_log(runs[2])
    assert [r["step"] for r in one] == [r["step"] for r in two] == list(range(STEPS))
    assert len({r["reward_mean"] for r in one}) > 1  # the policy moves: the steps are not all alike
    for a, b in zip(one, two):
        for key in a.keys() - TIMED:
            assert abs(a[key] - b[key]) <= TOL * max(1.0, abs(a[key])), (a["step"], key, a[key], b[key])
    wa = checkpoint.read(runs[1] / "rl" / f"model_{STEPS:06d}.pt")["model"]
    wb = checkpoint.read(runs[2] / "rl" / f"model_{STEPS:06d}.pt")["model"]
    init = checkpoint.read(tmp_path / "init.pt")["model"]
    assert any(not torch.equal(wa[k], init[k]) for k in wa)  # trained
    for k in wa:
        assert torch.allclose(wa[k], wb[k], rtol=0, atol=TOL), (k, (wa[k] - wb[k]).abs().max().item())
