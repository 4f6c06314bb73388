"""A step's batch over processes, so that a run's result does not depend on how many there are.

Every process knows the whole batch (prompts and sampling noise follow from (seed, step)); each samples,
scores and takes the log-probabilities of a contiguous share of its rows (the expensive part), then the
experience is gathered: a few [B, R] tensors, small beside the models. Advantages, whitening, group statistics
and logged statistics are then computed on the whole batch by every process alike, and each process takes its
share of every mini-batch of one shared shuffle (update.py).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from gpt2pipe import Gpt2pipeError
from gpt2pipe.distributed import World, gather_objects
from gpt2pipe.rl.rollout import Experience


def share(n: int, world: World, rank: int | None = None) -> slice:
    """The rows of n that process `rank` (default: this one) takes: contiguous, sizes differing by at most 1."""
    r = world.rank if rank is None else rank
    return slice(r * n // world.size, (r + 1) * n // world.size)


def check(rl, world: World) -> None:
    """Refuse, before any model exists, a batch that leaves a process without rows: every process must take
    part in every optimizer step (gradients are averaged over all of them)."""
    smallest = min(rl.mini_batch_size, rl.batch_size % rl.mini_batch_size or rl.mini_batch_size, rl.batch_size)
    if smallest < world.size:
        raise Gpt2pipeError(f"rl: a mini-batch of {smallest} responses (rl.batch_size {rl.batch_size}, "
                            f"rl.mini_batch_size {rl.mini_batch_size}) cannot be shared by {world.size} processes: "
                            "every mini-batch needs at least one response per process")


def _gather_rows(x: torch.Tensor, n: int, world: World) -> torch.Tensor:
    """The whole [n, ...] tensor from every process's share of its rows (padded to equal sizes to send)."""
    size = max(share(n, world, r).stop - share(n, world, r).start for r in range(world.size))
    padded = x.new_zeros((size, *x.shape[1:]))
    padded[: len(x)] = x
    parts = [torch.empty_like(padded) for _ in range(world.size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: share(n, world, r).stop - share(n, world, r).start] for r, p in enumerate(parts)])


def _left_pad(x: torch.Tensor, width: int, value) -> torch.Tensor:
    return torch.cat([x.new_full((x.shape[0], width), value), x], 1) if width else x


def gather(exp: Experience, n: int, pad: int, world: World) -> Experience:
    """The whole batch's experience (n rows) on every process, from each process's share. Prompts are
    left-padded to the widest of all processes (with `pad` tokens that the key mask hides)."""
    if not world.distributed:
        return exp
    widths = torch.tensor([exp.P], device=exp.seq.device)
    dist.all_reduce(widths, op=dist.ReduceOp.MAX)
    P, more = int(widths.item()), int(widths.item()) - exp.P
    valid = exp.valid if exp.valid is not None else torch.ones_like(exp.seq, dtype=torch.bool)
    seq = _gather_rows(_left_pad(exp.seq, more, pad), n, world)
    valid = _gather_rows(_left_pad(valid.long(), more, 0), n, world).bool()  # gloo sends no bool
    whole = {k: _gather_rows(getattr(exp, k), n, world) for k in ("mask", "scores", "old_logp", "ref_logp")}
    values = None if exp.values is None else _gather_rows(exp.values, n, world)
    prompts, responses = zip(*gather_objects((exp.prompts, exp.responses), world))
    return Experience(seq, None if bool(valid.all()) else valid, P, prompts=sum(prompts, []),
                      responses=sum(responses, []), values=values, **whole)
