"""Where an RL step's time goes (`PART=profile dev/rl/side_by_side.sh` on the GPU): `gpt2pipe rl` with its usual arguments, one step (PROFILE_STEP, default 4)
under torch.profiler with the parts labelled (sampling, texts, reward, log-probabilities, values, each update
pass's forward and optimizer steps), then the table of labelled parts (wall and GPU time) and the top GPU
kernels. Nothing of the package changes: the labels wrap its functions from here.

    PYTHONPATH=src python dev/rl/profile_rl.py -c CONFIG [--run-dir DIR --restart --set rl.steps=6 ...]
"""

import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from gpt2pipe.cli import main as cli_main
from gpt2pipe.rl import loop, rollout, update


def labelled(module, name: str, label: str | None = None) -> None:
    fn = getattr(module, name)

    def wrapped(*a, **k):
        with record_function(f"## {label or name}"):
            return fn(*a, **k)

    setattr(module, name, wrapped)


for mod, name, label in ((rollout, "sample", "sample"), (rollout, "_texts", "texts"),
                         (rollout.rewards_mod, "score", "reward"), (rollout, "response_logprobs", "rollout logp"),
                         # with recorded update graphs (rl/graphed.py) this covers only eager and recording calls
                         (update, "response_logprobs", "update forward logp"), (update, "optimizer_step", "optimizer"),
                         (loop, "collect", "collect"), (update, "_optimise", "update"),
                         (loop.shard, "gather", "gather")):
    labelled(mod, name, label)

STEP = int(os.environ.get("PROFILE_STEP", "4"))
rl_step = loop._Run.rl_step


def profiled_step(self, step):
    if step != STEP:
        return rl_step(self, step)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        with record_function("## rl_step"):
            row = rl_step(self, step)
        sync()
    avg = prof.key_averages()
    parts = sorted((e for e in avg if e.key.startswith("## ")), key=lambda e: -e.cpu_time_total)
    print(f"\nstep {step}: rollout {row['rollout_s'] * 1e3:.1f} ms, update {row['update_s'] * 1e3:.1f} ms")
    print("| part | calls | wall ms (CPU side) | GPU ms (kernels under it) |\n|---|---:|---:|---:|")
    for e in parts:
        print(f"| {e.key[3:]} | {e.count} | {e.cpu_time_total / 1e3:.1f} | {e.device_time_total / 1e3:.1f} |")
    kernels = sum(e.self_device_time_total for e in avg) / 1e3
    print(f"GPU busy: {kernels:.1f} ms of kernels in the step\n")
    print(avg.table(sort_by="self_device_time_total", row_limit=25, max_name_column_width=60))
    print(avg.table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=60))
    return row


loop._Run.rl_step = profiled_step
sys.exit(cli_main(["rl", *sys.argv[1:]]))
