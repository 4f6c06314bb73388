"""Issue 24 item 2 in one process: `gpt2pipe train`'s step (train/loop.py's Trainer.train_step, set up as the
CLI sets it up) and the bench's `kernels` step (bench/step.py's _Step) at the same shape, timed alternately
the same way (sync, step, sync) so neither gets another GPU state, process or timing rule; and the loop's
step once more with its batches already on the GPU (what the data path costs). Prints each round's times and
the medians. Random-token shards are written to --shards if missing.

    PYTHONPATH=src python dev/speed/loop_step_vs_bench_step.py --shards DIR --run-dir DIR [--rounds 10]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from gpt2pipe import config as config_mod
from gpt2pipe import distributed
from gpt2pipe.bench.step import _sdpa_context, _Step
from gpt2pipe.data.llmc_format import write_shard
from gpt2pipe.device import pick_device
from gpt2pipe.train.loop import Trainer

SHAPE = ["train.ops=kernels", "train.max_steps=1000", "train.micro_batch_size=64", "train.total_batch_tokens=524288",
         "train.seq_len=1024", "train.val_every=0", "train.checkpoint_every=100000"]


def shards(folder: Path) -> None:
    if (folder / "rand_train_000001.bin").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, n in (("rand_val_000000.bin", 1 << 20), ("rand_train_000001.bin", 24 << 20)):
        write_shard(folder / name, rng.integers(0, 50256, n, dtype=np.uint16))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", type=Path, required=True)
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--config", type=Path, default=Path("config/gpt2-124M.yaml"))
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="more config overrides (the CPU check's tiny model)")
    a = p.parse_args()
    shards(a.shards)
    cfg = config_mod.load(a.config, SHAPE + a.overrides)
    t = cfg.train
    device = pick_device(cfg.train.device)
    tr = Trainer.setup(cfg, a.shards, a.run_dir, resume=False, restart=True, progress=False,
                       world=distributed.setup(device.type), device=device)
    bench = _Step("kernels", cfg.model, t.micro_batch_size, t.seq_len, t.total_batch_tokens, distributed.World(), None)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def loop_step():
        tr.train_step()
        tr.state.step += 1

    # the loop again, its loader's next batches taken from tokens staged on the GPU: what the data path costs
    real_next = tr.state.loader.next_batch
    staged = [tuple(t.to(device) for t in real_next()) for _ in range(tr.grad_accum)]

    def loop_staged_step():
        tr.state.loader.next_batch = iter(staged).__next__
        try:
            loop_step()
        finally:
            tr.state.loader.next_batch = real_next

    def bench_step():
        with _sdpa_context("kernels"):
            bench()[0].item()

    times = {"loop": [], "loop, data staged": [], "bench": []}
    for r in range(a.warmup + a.rounds):
        runs = (("loop", loop_step), ("loop, data staged", loop_staged_step), ("bench", bench_step))
        for name, fn in runs if r % 2 else runs[::-1]:  # the order reversed every other round
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            ms = (time.perf_counter() - t0) * 1e3
            if r >= a.warmup:
                times[name].append(ms)
        if r >= a.warmup:
            print(f"round {r - a.warmup + 1}: " + ", ".join(f"{k} {v[-1]:.1f} ms" for k, v in times.items()))
    bench_ms = statistics.median(times["bench"])
    print("median: " + ", ".join(f"{k} {statistics.median(v):.1f} ms ({statistics.median(v) / bench_ms:.4f} of the "
                                 f"bench's)" for k, v in times.items()))


if __name__ == "__main__":
    main()
