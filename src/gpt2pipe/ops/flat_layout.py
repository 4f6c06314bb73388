"""Where each parameter lives in FlatAdamW's flat buffer (ops/flat_adamw.py): the order of the parameters
(ordered_params, which the saved whole-model state follows too) and the buckets of whole parameters that
share one reduce-scatter, each padded to a multiple of the process count so every process owns one slice."""

from __future__ import annotations

import torch

from gpt2pipe.distributed import World

BUCKET_ELEMENTS = 32 * 2**20  # ~64 MB of bf16 gradients per reduce-scatter


class Bucket:
    """Whole parameters sharing one reduce-scatter: [start, start + size) of the flat buffer (size padded
    to a multiple of the process count); this process owns slice `rank` of it, at `local` in its shard."""

    def __init__(self, params: list, start: int, size: int, world: World, local: int, decay: bool):
        self.params, self.start, self.size, self.decay = params, start, size, decay
        self.slice = size // world.size
        self.own = start + world.rank * self.slice  # where this process's slice sits in the flat buffer
        self.local = local


def make_buckets(params: list, world: World, bucket_elements: int = BUCKET_ELEMENTS) -> list[Bucket]:
    """Consecutive runs of whole parameters of up to bucket_elements (a larger parameter alone), decayed and
    not-decayed kept apart so a bucket is all one kind."""
    groups: list[tuple[list, bool]] = []
    for p in params:
        decay = p.dim() >= 2
        if not groups or groups[-1][1] != decay or sum(q.numel() for q in groups[-1][0]) + p.numel() > bucket_elements:
            groups.append(([], decay))
        groups[-1][0].append(p)
    buckets = []
    start = local = 0
    for members, decay in groups:
        size = -(-sum(q.numel() for q in members) // world.size) * world.size
        buckets.append(Bucket(members, start, size, world, local, decay))
        start += size
        local += size // world.size
    return buckets


def ordered_params(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Trainable parameters in the flat buffer's order: decayed (2-D) first, each group in model order —
    the same order as the two parameter groups of the training loop's torch AdamW."""
    params = list(dict.fromkeys(p for p in model.parameters() if p.requires_grad))
    return sorted(params, key=lambda p: p.dim() < 2)
