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
    p.add_argument("--smi", action="store_true", help="sample nvidia-smi's SM clock and power every 50 ms and "
                   "print their means over each variant's timed steps")
    p.add_argument("--profile", action="store_true",
                   help="then one profiled step of each: GPU busy time and the kernels that differ most")
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

    # the loop's step once more, staged, with the update launched before the step's one sync (the guard then
    # cannot skip it): what the mid-step sync costs
    from gpt2pipe.train.schedule import lr_at

    def loop_staged_late_sync_step():
        st, batches = tr.state, iter(staged)
        tr.runner.train()
        loss_sum = torch.zeros((), device=device)
        for k in range(tr.grad_accum):
            if k == tr.grad_accum - 1:
                st.optimizer.prepare_last_backward()
            x, y = next(batches)
            with tr.ctx:
                loss = tr.runner(x, y)[1]
            (loss / tr.grad_accum).backward()
            loss_sum += loss.detach()
        norm_t = st.optimizer.global_norm()
        st.optimizer.update(lr_at(st.step, t))
        (loss_sum / tr.grad_accum).item(), norm_t.item()
        st.step += 1

    def bench_step():
        with _sdpa_context("kernels"):
            bench()[0].item()

    # the bench's step on the loop's values: its weights copied in before each step (bench_w), or its tokens
    # (bench_x): whether the GEMMs' speed follows the numbers they multiply (power), not the code around them
    bench_w = _Step("kernels", cfg.model, t.micro_batch_size, t.seq_len, t.total_batch_tokens, distributed.World(),
                    None)
    bench_x = _Step("kernels", cfg.model, t.micro_batch_size, t.seq_len, t.total_batch_tokens, distributed.World(),
                    None)
    for k, (x, y) in enumerate(staged):
        bench_x.data[k, :, :-1] = x
        bench_x.data[k, :, -1] = y[:, -1]

    def bench_loop_weights_step():
        with torch.no_grad():
            for dst, src in zip(bench_w.model.parameters(), tr.state.model.parameters()):
                dst.copy_(src)
        sync()
        t0 = time.perf_counter()
        with _sdpa_context("kernels"):
            bench_w()[0].item()
        return t0

    def bench_loop_tokens_step():
        with _sdpa_context("kernels"):
            bench_x()[0].item()

    smi = Smi(a.smi)
    times = {"loop": [], "loop, data staged": [], "loop, staged, late sync": [], "bench": [],
             "bench, loop's weights": [], "bench, loop's tokens": []}
    for r in range(a.warmup + a.rounds):
        runs = (("loop", loop_step), ("loop, data staged", loop_staged_step),
                ("loop, staged, late sync", loop_staged_late_sync_step), ("bench", bench_step),
                ("bench, loop's weights", bench_loop_weights_step), ("bench, loop's tokens", bench_loop_tokens_step))
        for name, fn in runs if r % 2 else runs[::-1]:  # the order reversed every other round
            sync()
            t0 = time.perf_counter()
            t0 = fn() or t0  # a step that prepares something untimed first returns its own start
            sync()
            ms = (time.perf_counter() - t0) * 1e3
            if r >= a.warmup:
                times[name].append(ms)
                smi.phase(name, t0, time.perf_counter())
        if r >= a.warmup:
            print(f"round {r - a.warmup + 1}: " + ", ".join(f"{k} {v[-1]:.1f} ms" for k, v in times.items()))
    bench_ms = statistics.median(times["bench"])
    print("median: " + ", ".join(f"{k} {statistics.median(v):.1f} ms ({statistics.median(v) / bench_ms:.4f} of the "
                                 f"bench's)" for k, v in times.items()))
    smi.report()
    if a.profile:
        per = {name: kernel_ms(fn, sync) for name, fn in (("loop", loop_step), ("bench", bench_step))}
        (na, ka), (nb, kb) = per.items()
        print(f"GPU busy: {na} {sum(ka.values()):.1f} ms, {nb} {sum(kb.values()):.1f} ms")
        print(f"| kernel | {na} ms | {nb} ms | {na} - {nb} |\n|---|---:|---:|---:|")
        for k in sorted(set(ka) | set(kb), key=lambda k: -abs(ka.get(k, 0) - kb.get(k, 0)))[:15]:
            print(f"| {k[:90]} | {ka.get(k, 0):.2f} | {kb.get(k, 0):.2f} | {ka.get(k, 0) - kb.get(k, 0):+.2f} |")


class Smi:
    """nvidia-smi sampled in the background; phase() marks a timed step, report() prints means per name."""

    def __init__(self, on: bool):
        import subprocess

        self.phases: list[tuple[str, float, float]] = []
        self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=timestamp,clocks.sm,power.draw", "--format=csv,noheader,nounits",
                                      "-lms", "50"], stdout=subprocess.PIPE, text=True) if on else None

    def phase(self, name: str, t0: float, t1: float) -> None:
        if self.proc:  # perf_counter -> wall clock, which nvidia-smi's timestamps use
            shift = time.time() - time.perf_counter()
            self.phases.append((name, t0 + shift, t1 + shift))

    def report(self) -> None:
        if not self.proc:
            return
        from datetime import datetime

        self.proc.terminate()
        samples = []
        for line in self.proc.stdout.read().splitlines():
            try:
                stamp, clock, power = (f.strip() for f in line.split(","))
                samples.append((datetime.strptime(stamp, "%Y/%m/%d %H:%M:%S.%f").timestamp(), float(clock),
                                float(power)))
            except ValueError:
                continue
        per: dict[str, list[tuple[float, float]]] = {}
        for name, t0, t1 in self.phases:
            per.setdefault(name, []).extend((c, w) for ts, c, w in samples if t0 <= ts <= t1)
        for name, cw in per.items():
            if cw:
                print(f"smi {name}: {len(cw)} samples, SM clock {statistics.mean(c for c, _ in cw):.0f} MHz "
                      f"(min {min(c for c, _ in cw):.0f}), power {statistics.mean(w for _, w in cw):.0f} W")


def kernel_ms(fn, sync) -> dict[str, float]:
    """{kernel (or memcpy/memset): its GPU ms} over one profiled call of fn, between two syncs."""
    from torch.profiler import ProfilerActivity, profile

    sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        sync()
    return {e.key: e.self_device_time_total / 1e3 for e in prof.key_averages() if e.self_device_time_total > 0}


if __name__ == "__main__":
    main()
