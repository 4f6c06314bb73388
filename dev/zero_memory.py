#!/usr/bin/env python3
"""Peak GPU memory and step time of ZeRO-1/2/3 (issue 15), and the largest GPT-2 that trains.

    torchrun --standalone --nproc_per_node 2 dev/zero_memory.py     # 2 GPUs (and the 1-GPU search)
    python dev/zero_memory.py                                       # 1 GPU

Prints markdown tables:
  1. for ZeRO 1/2 (kernels path when CuPy is there, and the torch path) and ZeRO 3 (torch path, FSDP2) at
     124M and 774M: peak allocated and reserved GiB per GPU (max over ranks) and ms/step, a few steps on
     random tokens with T=1024 and a small micro-batch, 2 accumulation steps (ZeRO-2 then reduce-scatters
     both micro-steps);
  2. the largest GPT-2 size (1558M, 774M, 350M, 124M, tried largest first) that trains for 3 steps under
     ZeRO-3 on all the GPUs given, and on one GPU for each path (on one process every stage is the same
     unsharded optimizer); an out-of-memory is caught and reported.

Robust to being run once, unseen: each measurement runs in a child `torchrun` of its own with a time limit
(a fresh process: no memory left over from an earlier measurement); a failure (OOM) kills that child only, and the driver goes on with the next configuration. Under torchrun the
driver is rank 0 alone (other ranks exit at once); the children get a clean environment.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT = "ZERO_MEMORY_RESULT "
START = 60  # seconds a child torchrun may take to start (imports, process group)
SIZES = ["124M", "350M", "774M", "1558M"]
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
              "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID",
              "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_USE_AGENT_STORE",
              "TORCH_NCCL_ASYNC_ERROR_HANDLING", "TORCHELASTIC_ERROR_FILE", "NCCL_ASYNC_ERROR_HANDLING")


# ---------------------------------------------------------------------------------------------- worker
def _measure(job: dict, world, device) -> dict:
    """Build the model and optimizer exactly as `gpt2pipe train` does, train `steps` steps, measure."""
    import contextlib

    import torch

    from gpt2pipe import config
    from gpt2pipe.model.gpt import GPT, GPT2_SIZES
    from gpt2pipe.train.optim import build_optimizer

    kernels = job["path"] == "kernels"
    B, T, accum = job["micro_batch"], job["seq_len"], job["accum"]
    shape = GPT2_SIZES.get(job["size"], config.ModelConfig(n_layer=2, n_head=2, n_embd=32))  # "tiny*": a CPU check
    raw = {"model": {"n_layer": shape.n_layer, "n_head": shape.n_head, "n_embd": shape.n_embd,
                     "block_size": max(T, 8)},
           "train": {"seq_len": T, "micro_batch_size": B, "total_batch_tokens": B * T * accum,
                     "zero": job["zero"], "ops": "kernels" if kernels else "torch", "device": device.type}}
    cfg = config.from_dict(raw, "zero_memory")
    # checks of the failure paths, on rank 0 only: ZERO_MEMORY_FAKE=size:oom or size:hang
    fake = dict(x.split(":") for x in os.environ.get("ZERO_MEMORY_FAKE", "").split(",") if ":" in x)
    if world.rank == 0 and fake.get(job["size"]) == "oom":
        raise torch.cuda.OutOfMemoryError("fake")
    if world.rank == 0 and fake.get(job["size"]) == "hang":
        time.sleep(3600)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    with torch.device(device):  # built on the GPU: a 1558M init on the CPU would take most of the time
        model = GPT(cfg.model, ops="kernels" if kernels else "torch")
    model.to(device)  # anything the constructor put elsewhere, as `gpt2pipe train` does
    opt = build_optimizer(model, cfg.train, world, device, kernels)
    ctx = (contextlib.nullcontext() if kernels or device.type != "cuda"
           else torch.autocast(device_type="cuda", dtype=torch.bfloat16))
    gen = torch.Generator(device="cpu").manual_seed(world.rank)
    times, losses = [], []
    phases: list[str] = []  # step 1: each phase's peak / allocated at its end (GiB), to say where the peak is
    peaks: list[float] = []

    def phase(name: str, step: int) -> None:
        if device.type != "cuda" or step > 1:
            return
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated() / 2**30)
        if step == 1:
            phases.append(f"{name} {peaks[-1]:.2f}/{torch.cuda.memory_allocated() / 2**30:.2f}")
        torch.cuda.reset_peak_memory_stats()

    for step in range(job["steps"] + 1):  # step 0: warm-up (allocator, cuBLAS, kernel compilation), not timed
        if device.type == "cuda":
            torch.cuda.synchronize()
        phase("start", step)
        t0 = time.perf_counter()
        for k in range(accum):
            if k == accum - 1:
                opt.prepare_last_backward()
            x = torch.randint(0, cfg.model.vocab_size, (B, T + 1), generator=gen).to(device)
            with ctx:
                _, loss = model(x[:, :-1], x[:, 1:])
            phase(f"fwd{k}", step)
            (loss / accum).backward()
            phase(f"bwd{k}", step)
        opt.global_norm()
        opt.update(3e-4)
        losses.append(float(loss.item()))  # syncs
        phase("update", step)
        if step:
            times.append(time.perf_counter() - t0)
    peak = (max(peaks + [torch.cuda.max_memory_allocated() / 2**30]) if device.type == "cuda"
            else float("nan"))
    reserved = torch.cuda.max_memory_reserved() / 2**30 if device.type == "cuda" else float("nan")
    return {"peak_gib": peak, "reserved_gib": reserved, "ms_step": 1e3 * sorted(times)[len(times) // 2],
            "loss": losses[-1], "describe": opt.describe(), "phases": " ".join(phases)}


def worker(job: dict) -> None:
    """Run one job in this process group; rank 0 prints its RESULT line (per-rank peaks)."""
    import datetime

    import torch
    import torch.distributed as dist

    from gpt2pipe import distributed

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # a hung collective aborts in 90 s instead of NCCL's 10 min
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(seconds=90))
    world = distributed.setup(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        out = _measure(job, world, device)
    except torch.cuda.OutOfMemoryError:
        print(RESULT + json.dumps({**job, "status": "OOM", "rank": world.rank}), flush=True)
        os._exit(3)  # the other ranks may wait in a collective: torchrun stops them
    per_rank = distributed.gather_objects(out, world)
    if world.main:
        print(RESULT + json.dumps({**job, "status": "ok", "ranks": per_rank}), flush=True)
    distributed.barrier(world)
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------- driver
def _child(job: dict, nproc: int, limit: float, env: dict, on_result) -> tuple[list[dict], str, object]:
    """One child torchrun for `job` (a fresh process: a process keeps memory of the jobs it ran before — each
    job's starting memory held all earlier jobs' model and optimizer, which once made ZeRO-2 look bigger than
    ZeRO-1); its RESULT line is handed to on_result as it arrives. After `limit` seconds torchrun gets SIGTERM
    (it stops its workers, which run in sessions of their own), then SIGKILL; the reader never blocks."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           __file__, "--worker", json.dumps(job)]
    done: list[dict] = []
    other: list[str] = []
    with tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env, start_new_session=True)

        def read() -> None:
            for line in p.stdout:
                other.append(line)
                if line.startswith(RESULT):
                    done.append(json.loads(line[len(RESULT):]))
                    on_result(done[-1])

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            rc: object = p.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            rc = "time limit"
            p.terminate()
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        reader.join(timeout=10)
        err.seek(0)
        return list(done), err.read() + "".join(other[-5:]), rc


def _run_jobs(jobs: list[dict], nproc: int, per_job: float, deadline: float, on_result,
              stop_on_success: bool = False) -> list[dict]:
    """Run jobs in child torchruns; a job that fails (OOM, crash, time limit) is recorded and the rest go on;
    nothing starts after `deadline` (time.time()). stop_on_success: a search: stop at the first that trains."""
    results: list[dict] = []
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "4")
    env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    todo = list(jobs)

    def report(r: dict) -> None:
        if r["status"] == "ok":
            results.append(r)
            on_result(r)

    while todo:
        left = deadline - time.time()
        if left < 20:
            for j in todo:
                results.append({**j, "status": "skipped (time budget)"})
                on_result(results[-1])
            break
        t0 = time.time()
        done, err, rc = _child(todo[0], nproc, min(START + per_job, left + 30), env, report)
        failed = todo.pop(0)
        if any(d["status"] == "ok" for d in done):
            if stop_on_success:
                break
            continue
        oom = any(d["status"] == "OOM" for d in done) or "OutOfMemoryError" in err
        why = "OOM" if oom else f"failed ({rc}, {time.time() - t0:.0f} s)"
        results.append({**failed, "status": why})
        on_result(results[-1])
        if not oom:
            tail = "\n".join(err.strip().splitlines()[-8:])
            print(f"<!-- {failed['path']} zero {failed['zero']} {failed['size']}: {why}\n{tail}\n-->", flush=True)
    return results


def _gpu_name() -> str:
    try:
        names = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                               text=True, timeout=30).stdout.split("\n")
        return names[0].strip() or "GPU"
    except (OSError, subprocess.SubprocessError):
        return "GPU"


def _row(r: dict, nproc: int) -> str:
    name = f"ZeRO-{r['zero']}" if nproc > 1 else f"ZeRO-{r['zero']} (1 process: unsharded)"
    if r["status"] != "ok":
        return f"| {r['size']} | {r['path']} | {name} | {r['micro_batch']}x{r['seq_len']}x{r['accum']} | {r['status']} | | | |"
    ranks = r["ranks"]
    peaks = " / ".join(f"{x['peak_gib']:.2f}" for x in ranks)
    return (f"| {r['size']} | {r['path']} | {name} | {r['micro_batch']}x{r['seq_len']}x{r['accum']} | {peaks} | "
            f"{max(x['reserved_gib'] for x in ranks):.2f} | {max(x['ms_step'] for x in ranks):.0f} | "
            f"{ranks[0]['loss']:.3f} |") + (f"\n<!-- rank 0 phases (peak/allocated GiB): {ranks[0]['phases']} -->"
                   if ranks[0].get("phases") else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--sizes", default="124M,774M", help="sizes for the memory table")
    ap.add_argument("--micro-batch", type=int, default=8, help="micro-batch of the table and the search")
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    ap.add_argument("--timeout", type=float, default=40, help="seconds per measurement (a child's limit: 60 + this x its jobs)")
    ap.add_argument("--budget", type=float, default=330, help="seconds after which nothing new starts (the table "
                    "gets the first 55%%): the whole script stays within about 6 minutes")
    ap.add_argument("--search-sizes", default="1558M,774M,350M,124M", help="sizes the search tries, in order")
    ap.add_argument("--no-search", action="store_true", help="skip the largest-model search")
    args = ap.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun: rank 0 drives, the children use the GPUs
    import torch

    from gpt2pipe.ops import kernels_available

    gpus = torch.cuda.device_count()
    asked = int(os.environ.get("WORLD_SIZE", "1"))
    nproc = max(1, min(asked, gpus)) if gpus else asked  # CPU (gloo): a check of this script itself
    paths = (["kernels"] if kernels_available() else []) + ["torch"]
    base = {"micro_batch": args.micro_batch, "seq_len": args.seq_len, "accum": 2, "steps": args.steps}
    device = _gpu_name() if gpus else "CPU"  # not torch.cuda.get_device_name: no CUDA context in the driver
    print(f"## ZeRO memory: {nproc} x {device}, torch {torch.__version__}\n", flush=True)
    t0 = time.time()

    jobs = [dict(base, size=s, path=p, zero=z) for s in args.sizes.split(",") for p in paths for z in (1, 2)]
    jobs += [dict(base, size=s, path="torch", zero=3) for s in args.sizes.split(",")]
    jobs.sort(key=lambda j: SIZES.index(j["size"]) if j["size"] in SIZES else 0)
    print("| model | path | stage | B x T x accum | peak GiB per GPU (rank 0 / 1 ...) | max reserved GiB | "
          "ms/step | last loss |\n|---|---|---|---|---|---|---|---|", flush=True)
    deadline = t0 + 0.55 * args.budget
    _run_jobs(jobs, nproc, args.timeout, deadline, lambda r: print(_row(r, nproc), flush=True))
    if args.no_search:
        return
    search = dict(base, accum=1, steps=3)
    print(f"\n## Largest GPT-2 that trains 3 steps (micro-batch {args.micro_batch} x {args.seq_len})\n\n"
          "| GPUs | path | stage | largest | tried (largest first) |\n|---|---|---|---|---|", flush=True)
    cases = ([(nproc, "torch", 3)] if nproc > 1 else []) + [(1, p, 1) for p in paths]
    for n, p, z in cases:
        tried = _run_jobs([dict(search, size=s, path=p, zero=z) for s in args.search_sizes.split(",")], n,
                          args.timeout, t0 + args.budget, lambda r: None, stop_on_success=True)
        fits = [r["size"] for r in tried if r["status"] == "ok"]
        trail = ", ".join(f"{r['size']} {r['status']}" + (f" {max(x['peak_gib'] for x in r['ranks']):.1f} GiB"
                          if r["status"] == "ok" else "") for r in tried)
        stage = f"ZeRO-{z}" if n > 1 else "any (1 process: unsharded)"
        print(f"| {n} | {p} | {stage} | {fits[0] if fits else 'none'} | {trail} |", flush=True)
    print(f"\n({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
