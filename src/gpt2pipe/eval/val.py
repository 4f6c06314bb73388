"""Validation loss on a fixed token budget: the same first tokens of the val split every time, so numbers
from training, from the evaluate stage and from llm.c (whose -m batches read the same way) compare."""

from __future__ import annotations

import torch

from gpt2pipe.data.loader import ShardLoader
from gpt2pipe.distributed import World, mean


@torch.no_grad()
def val_loss(model, loader: ShardLoader, tokens: int, device: torch.device, autocast_ctx,
             world: World = World()) -> float:
    """Mean loss over the first `tokens` tokens of the val split (at least one batch, at most the whole split),
    always the same ones;
    with several processes each scores its part of every batch and the means are averaged."""
    model.eval()
    loader.reset()
    # at most one pass over the split, as llm.c caps its val batches: a budget past a small val shard would
    # score the same tokens again (hours of CPU for the default budget over a 20K-token split)
    steps = max(1, min(tokens // (loader.B * loader.T * loader.world), loader.per_epoch // loader.world))
    total = torch.zeros((), device=device)
    for _ in range(steps):
        x, y = loader.next_batch()
        with autocast_ctx:
            _, loss = model(x.to(device), y.to(device))
        total += loss.float()
    return mean(total / steps, world).item()
