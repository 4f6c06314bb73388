#!/usr/bin/env python3
"""Peak memory of saving and loading a training state (issue 12): the optimizer's whole-model state is
gathered bucket by bucket into process 0 alone, and each process reads only its own slices back from the
memory-mapped file. Run on GPUs, alone or under torchrun:

    python dev/state_memory.py --size 1558M --dir /tmp/state
    torchrun --standalone --nproc_per_node 2 dev/state_memory.py --size 1558M --dir /tmp/state

Prints, per process: GPU memory before, the peak while saving and while loading (above what training holds
anyway), the CPU peak RSS, and the seconds each took.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import torch

from gpt2pipe import distributed
from gpt2pipe.model import checkpoint
from gpt2pipe.model.gpt import GPT, GPT2_SIZES
from gpt2pipe.config import from_dict
from gpt2pipe.train.optim import make_flat_optimizer


def gib(n: int) -> float:
    return n / 2**30


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kilobytes on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1558M", choices=list(GPT2_SIZES))
    ap.add_argument("--dir", type=Path, default=Path("/tmp/state_memory"))
    args = ap.parse_args()
    world = distributed.setup("cuda")
    if world.main:
        print("| model | processes | rank | params | GiB held | save: extra GPU GiB | s | load: extra GPU GiB | s "
              "| CPU peak RSS after save GiB | after load GiB |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
              flush=True)
    torch.cuda.set_device(world.local_rank)
    cfg = GPT2_SIZES[args.size]
    model = GPT(cfg, ops="kernels").cuda()
    opt = make_flat_optimizer(model, from_dict({}).train, world)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    state = opt.whole_state()
    if world.main:
        checkpoint.save(args.dir / "state_000001.pt", model, 1, kind="train-state", optimizer=state)
    del state
    distributed.barrier(world)
    save_s, save_peak, save_rss = time.perf_counter() - t0, torch.cuda.max_memory_allocated() - base, rss_gib()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    saved = checkpoint.read(args.dir / "state_000001.pt", mmap=True)
    model.load_state_dict(saved["model"])
    opt.load_whole_state(saved["optimizer"], weights_from_master=False)
    del saved
    torch.cuda.synchronize()
    load_s, load_peak = time.perf_counter() - t0, torch.cuda.max_memory_allocated() - base
    print(f"| {args.size} | {world.size} | {world.rank} | {model.num_params() / 1e6:.0f}M | {gib(base):.1f} | "
          f"{gib(save_peak):.2f} | {save_s:.1f} | {gib(load_peak):.2f} | {load_s:.1f} | {save_rss:.1f} | "
          f"{rss_gib():.1f} |", flush=True)
    distributed.teardown(world)


if __name__ == "__main__":
    main()
