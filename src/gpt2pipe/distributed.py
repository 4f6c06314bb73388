"""Process-group setup for data-parallel training, from torchrun's or SLURM's environment.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; under `srun` (one task per GPU)
the same facts come from SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID and the job step's first node (which
holds task 0). The same `gpt2pipe train` command therefore runs alone, under torchrun, or under srun. NCCL on
GPUs, gloo on CPUs.

Across nodes: the rank is global (process 0 alone writes logs and checkpoints; a node's local rank 0 is an
ordinary process), the local rank picks the GPU, and the run folder must be one shared filesystem seen by
every node, as Snakemake's SLURM executor assumes too: every process reads the saved state to resume.

Failure behaviour: a collective that waits longer than `GPT2PIPE_NCCL_TIMEOUT_S` seconds (default 600, long
enough for process 0 to write a large checkpoint while the others wait) is aborted and its process dies
(`TORCH_NCCL_ASYNC_ERROR_HANDLING=1`, set unless the environment says otherwise), so a dead or stuck peer
never leaves the job hanging: torchrun (or `srun --kill-on-bad-exit`) then stops the remaining processes.
A SIGKILLed peer is usually noticed sooner than that, by torchrun itself, which tears the group down.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def _slurm_env() -> None:
    """Fill torchrun's variables from SLURM's when a job step runs one task per GPU."""
    if "RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) <= 1 or "SLURM_PROCID" not in os.environ:
        return
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
    if "MASTER_ADDR" not in os.environ:
        # task 0 runs on the step's first node (srun's default block distribution); the job's node list is the
        # fallback for older srun that does not set the step's
        nodes = next((os.environ[k] for k in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
                      if os.environ.get(k)), "localhost")
        try:
            first = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True,
                                   check=True, timeout=30).stdout.split()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            first = first_host(nodes)
        os.environ["MASTER_ADDR"] = first
    os.environ.setdefault("MASTER_PORT", str(29500 + int(os.environ.get("SLURM_JOB_ID", "0")) % 1000))


def first_host(nodelist: str) -> str:
    """The first host of a SLURM host list, as `scontrol show hostnames` would name it, for nodes without
    scontrol: "gpu[007-010,012],cpu1" -> "gpu007", "rack[2-3]-n[01-04]" -> "rack2-n01", "a,b" -> "a"."""
    depth, end = 0, len(nodelist)
    for i, c in enumerate(nodelist):  # the first entry: up to the first comma outside brackets
        depth += (c == "[") - (c == "]")
        if c == "," and depth == 0:
            end = i
            break
    # each bracket: its first item's first number, zero padding kept
    return re.sub(r"\[([^\]]*)\]", lambda m: m.group(1).split(",")[0].split("-")[0], nodelist[:end].strip())


def cuda_index(local_rank: int, visible: int) -> int:
    """The GPU of the process with this node-local rank among the `visible` GPUs it sees: its local rank when it
    sees the node's GPUs, 0 when it sees only its own (srun --gpus-per-task, --ntasks-per-gpu or
    --gpu-bind=single bind one GPU per task, cgroups may hide the others)."""
    if visible == 1:
        return 0
    if not 0 <= local_rank < visible:
        from gpt2pipe import Gpt2pipeError

        raise Gpt2pipeError(f"process with local rank {local_rank} sees only {visible} GPU(s): start one process "
                            "per GPU of the node (torchrun --nproc_per_node, srun --ntasks-per-node)")
    return local_rank


DEFAULT_TIMEOUT_S = 600
TIMEOUT_ENV = "GPT2PIPE_NCCL_TIMEOUT_S"


def collective_timeout(override_s: float | None = None) -> timedelta:
    """How long one collective (or the rendezvous) may wait for the other processes before the job fails:
    `override_s`, else $GPT2PIPE_NCCL_TIMEOUT_S, else 600 s. A bad value is an error, not a silent default."""
    if override_s is not None:
        return timedelta(seconds=float(override_s))
    raw = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        from gpt2pipe import Gpt2pipeError

        raise Gpt2pipeError(f"{TIMEOUT_ENV}={raw!r}: expected a positive number of seconds")
    return timedelta(seconds=seconds)


def nccl_failure_env() -> None:
    """Make NCCL fail fast instead of hanging (torch >= 2.2 names; the user's own settings win):
    a collective past its timeout aborts the communicator and ends the process (async error handling 1,
    "tear down"), and the watchdog's heartbeat gets a bounded wait too."""
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    os.environ.setdefault("TORCH_NCCL_DUMP_ON_TIMEOUT", "0")  # no debug dumps to write while dying


def setup(device_type: str, timeout_s: float | None = None) -> World:
    """Join the process group if launched as one of several processes; a lone process needs nothing.
    timeout_s: the collective timeout (default: collective_timeout())."""
    _slurm_env()
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        timeout = collective_timeout(timeout_s)
        if device_type == "cuda":
            nccl_failure_env()
            torch.cuda.set_device(cuda_index(world.local_rank, torch.cuda.device_count()))
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo", timeout=timeout)
    return world


def teardown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def total(value: torch.Tensor, world: World) -> torch.Tensor:
    """Sum of a tensor over all processes (a new tensor; the tensor itself on one process)."""
    if world.distributed:
        value = value.clone()
        dist.all_reduce(value)
    return value


def mean(value: torch.Tensor, world: World) -> torch.Tensor:
    """Average of a tensor over all processes (gloo has no AVG, so SUM and divide)."""
    return total(value, world) / world.size if world.distributed else value


def any_rank(flag: bool, world: World, device: torch.device) -> bool:
    """True on every process if it is true on any (so all stop at the same step)."""
    if not world.distributed:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def gather_objects(obj, world: World) -> list:
    """Every process's `obj` (plain values and CPU tensors), in rank order, on every process."""
    if not world.distributed:
        return [obj]
    out = [None] * world.size
    dist.all_gather_object(out, obj)
    return out
