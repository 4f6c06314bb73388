"""Where a training step's time goes, model against model (issue 24: the speedrun model's step vs GPT-2's):
each NAME=CONFIG is set up exactly as `gpt2pipe train` sets it up (train/loop.py's Trainer.setup: model, ops
path, optimizer, loader), runs WARMUP steps, then one step under torch.profiler. Printed per model: the
labelled parts (CPU wall and the GPU time of the kernels launched under each; backward runs on autograd's
thread, so its GPU time shows only in the kernel table), the GPU busy time and the top kernels; then one table
of the kernels whose time differs most between the first two models. Nothing of the package changes: the
labels wrap its functions from here.

    PYTHONPATH=src python dev/speed/profile_step.py --shards DIR --run-dir DIR [--set k=v ...] \
        gpt2=config/gpt2-124M.yaml speedrun=config/speedrun.yaml
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function
from torch.autograd import DeviceType

from gpt2pipe import config as config_mod
from gpt2pipe import distributed
from gpt2pipe.device import pick_device
from gpt2pipe.train import newton_schulz
from gpt2pipe.train.loop import Trainer


def labelled(obj, name: str, label: str) -> None:
    fn = getattr(obj, name)

    def wrapped(*a, **k):
        with record_function(f"## {label}"):
            return fn(*a, **k)

    setattr(obj, name, wrapped)


# Muon's orthogonalisation (a module function that orthogonal_updates looks up at call time)
labelled(newton_schulz, "newton_schulz", "muon newton-schulz")


def profile_model(name: str, cfg_path: Path, overrides: list[str], shards: Path, run_dir: Path, warmup: int,
                  rows: int) -> dict[str, float]:
    """Set up as `gpt2pipe train`, WARMUP steps, then one profiled step; returns {kernel: GPU ms}."""
    cfg = config_mod.load(cfg_path, overrides)
    device = pick_device(cfg.train.device)
    world = distributed.setup(device.type)
    tr = Trainer.setup(cfg, shards, run_dir / name, resume=False, restart=True, progress=False, world=world,
                       device=device)
    st = tr.state
    labelled(st.loader, "next_batch", "data next_batch")
    labelled(st.loader, "prefetch", "data prefetch (read and copy the next batch)")
    labelled(st.optimizer, "global_norm", "optimizer global_norm")
    labelled(st.optimizer, "update", "optimizer update")
    labelled(tr.runner, "forward", "model forward")
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    times = []
    for _ in range(warmup):
        sync()
        t0 = time.perf_counter()
        tr.train_step()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
        st.step += 1
    sync()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        with record_function("## train_step"):
            tr.train_step()
        sync()
    wall = (time.perf_counter() - t0) * 1e3
    avg = prof.key_averages()
    m = cfg.model
    print(f"\n## {name} ({cfg_path}: {m.n_layer}x{m.n_embd}, {m.n_head} heads, pos {m.pos_embedding}, {m.norm}, "
          f"{m.mlp}, qk_norm {m.qk_norm}; optimizer {cfg.train.optimizer}, ops {cfg.train.ops}; "
          f"B={cfg.train.micro_batch_size} x {tr.grad_accum} accumulation)")
    print(f"warm-up steps (ms, unprofiled): {[round(t, 1) for t in times]}; profiled step: {wall:.1f} ms wall")
    print("| part | calls | CPU wall ms | GPU ms under it |\n|---|---:|---:|---:|")
    for e in sorted((e for e in avg if e.key.startswith("## ")), key=lambda e: -e.cpu_time_total):
        print(f"| {e.key[3:]} | {e.count} | {e.cpu_time_total / 1e3:.1f} | {e.device_time_total / 1e3:.1f} |")
    # kernels (and memcpy/memset) by their own GPU time: device events only, not the GPU-side copies of
    # record_function ranges (autograd Functions' names, the "## " labels), which would count kernels twice
    kernels = {e.key: (e.self_device_time_total / 1e3, e.count) for e in avg
               if e.device_type == DeviceType.CUDA and not e.is_user_annotation and e.self_device_time_total > 0
               and not e.key.startswith("## ")}
    busy = sum(ms for ms, _ in kernels.values())
    print(f"GPU busy: {busy:.1f} ms of kernels in the step\n")
    print(f"| kernel (top {rows} by GPU time) | calls | GPU ms | % of busy |\n|---|---:|---:|---:|")
    for k, (ms, n) in sorted(kernels.items(), key=lambda kv: -kv[1][0])[:rows]:
        print(f"| {k[:110]} | {n} | {ms:.2f} | {100 * ms / busy:.1f} |")
    if not cuda:  # the CPU test: no kernels, the CPU ops instead
        print(avg.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=90))
    sys.stdout.flush()
    del tr, st, prof, avg
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return {k: ms for k, (ms, _) in kernels.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", metavar="NAME=CONFIG")
    p.add_argument("--shards", type=Path, required=True)
    p.add_argument("--run-dir", type=Path, required=True, help="scratch run folders go under it, one per model")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every model (repeatable)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rows", type=int, default=25, help="kernels per table")
    args = p.parse_args()
    per = {}
    for item in args.models:
        name, _, path = item.partition("=")
        per[name] = profile_model(name, Path(path), args.overrides, args.shards, args.run_dir, args.warmup, args.rows)
    if len(per) >= 2:
        (a, ka), (b, kb) = list(per.items())[:2]
        diff = sorted(set(ka) | set(kb), key=lambda k: -abs(kb.get(k, 0) - ka.get(k, 0)))[: args.rows]
        total = sum(kb.values()) - sum(ka.values())
        print(f"\n## kernels whose GPU time differs most, {b} - {a} (total {total:+.1f} ms)")
        print(f"| kernel | {a} ms | {b} ms | {b} - {a} |\n|---|---:|---:|---:|")
        for k in diff:
            print(f"| {k[:100]} | {ka.get(k, 0):.2f} | {kb.get(k, 0):.2f} | {kb.get(k, 0) - ka.get(k, 0):+.2f} |")


if __name__ == "__main__":
    main()
