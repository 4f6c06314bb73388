"""Batches of (inputs, targets) from llm.c shards, the way llm.c's DataLoader walks them.

Each process takes its own B*T slice of every global batch (rank-strided), shards are visited in order,
and the position (shard, offset) is a small state dict saved in checkpoints so a resumed run reads
exactly the tokens the uninterrupted run would have read.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from gpt2pipe import Gpt2pipeError
from gpt2pipe.data.shards import read_shard


class ShardLoader:
    def __init__(self, shards: Sequence[Path], batch_size: int, seq_len: int,
                 rank: int = 0, world_size: int = 1, vocab_size: int = 50257):
        if not shards:
            raise Gpt2pipeError("no shards to load")
        self.shards = list(shards)
        self.B, self.T, self.rank, self.world = batch_size, seq_len, rank, world_size
        self.vocab_size = vocab_size
        need = self.B * self.T * self.world + 1
        # validate every shard up front: a corrupt one fails before any training time is spent
        sizes = [len(read_shard(p, vocab_size)) for p in self.shards]
        if max(sizes) < need:
            raise Gpt2pipeError(f"{self.shards[0]}: shards hold {max(sizes)} tokens, fewer than one batch needs ({need})")
        self.reset()

    def reset(self, shard: int = 0, position: int = 0) -> None:
        self.shard, self.position = shard, position
        self.tokens = read_shard(self.shards[self.shard], self.vocab_size, check_tokens=False)

    def state_dict(self) -> dict:
        return {"shard": self.shard, "position": self.position, "shards": [p.name for p in self.shards]}

    def load_state_dict(self, state: dict) -> None:
        self.reset(state["shard"], state["position"])

    def _advance_shard(self) -> None:
        self.reset((self.shard + 1) % len(self.shards), 0)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        span = self.B * self.T
        while self.position + span * self.world + 1 > len(self.tokens):
            self._advance_shard()
        start = self.position + self.rank * span
        buf = torch.from_numpy(np.asarray(self.tokens[start : start + span + 1], dtype=np.int64))
        self.position += span * self.world
        return buf[:-1].view(self.B, self.T), buf[1:].view(self.B, self.T)
