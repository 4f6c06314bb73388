"""Batches of (inputs, targets) from llm.c shards, in one global order that does not depend on the
number of processes.

A *sample* is one rank-local micro-batch: a window of B*T+1 tokens starting at a multiple of B*T in one
shard (windows overlap by the one target token, as in llm.c). One epoch visits every window of every
shard once. With shuffling (training), each epoch permutes the shard order again and, inside each shard,
its windows — llm.c's scheme draw for draw: its Mersenne Twister (numerically torch's and numpy's legacy
MT19937) seeded with `seed`, its Fisher-Yates `random_permutation`, the shard order permuted in place
epoch after epoch. On one process with seed 42, B and T as llm.c's, the batches are exactly those of
llm.c's `train_gpt2cu` (which seeds its loader with 42 + rank), so loss curves compare like for like.
Without shuffling (validation), shards and windows are in order.

Process r of W reads global sample g + r, then every process advances g by W. So one process with
gradient accumulation A and W processes with A/W read the same tokens in every optimizer step — across
shard and epoch boundaries — and the whole state is the counter g: a state saved by 2 processes resumes
exactly on 1, and the other way round.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from gpt2pipe import Gpt2pipeError
from gpt2pipe.data.llmc_format import read_shard

STATE_VERSION = 1


class ShardLoader:
    """Rank `rank` of `world_size`'s micro-batches; see the module docstring for the order."""

    def __init__(self, shards: Sequence[Path], batch_size: int, seq_len: int, rank: int = 0, world_size: int = 1,
                 *, shuffle: bool = False, seed: int = 0, vocab_size: int = 50257,
                 log: Callable[[str], None] | None = None):
        if not shards:
            raise Gpt2pipeError("no shards to load")
        if not 0 <= rank < world_size:
            raise Gpt2pipeError(f"rank {rank} is outside 0..{world_size - 1}")
        self.shards = [Path(p) for p in shards]
        self.B, self.T, self.rank, self.world = batch_size, seq_len, rank, world_size
        self.shuffle, self.seed, self.vocab_size, self.log = shuffle, seed, vocab_size, log
        self.span = self.B * self.T
        # header and size only (memory maps): the tokens were range-checked when the shards were written
        self.tokens = [read_shard(p, vocab_size, check_tokens=False) for p in self.shards]
        self.windows = np.array([max(0, (len(t) - 1) // self.span) for t in self.tokens], dtype=np.int64)
        self.per_epoch = int(self.windows.sum())
        if not self.per_epoch:
            longest = max(len(t) for t in self.tokens)
            raise Gpt2pipeError(f"{self.shards[0].parent}: the largest shard holds {longest} tokens, fewer than one "
                                f"sample of {self.B}x{self.T}+1 = {self.span + 1} tokens needs")
        self._plan: tuple | None = None  # (epoch, shard order, cumulative windows, window orders)
        self._shuffle = LlmcShuffle(seed, self.windows)
        self.reset()

    # --- position -----------------------------------------------------------------------------------
    def reset(self) -> None:
        """Back to the very first sample (val_loss calls this before every evaluation)."""
        self.sample = 0  # global index of the sample process 0 reads next
        self.epoch = 0

    def state_dict(self) -> dict:
        """The position plus what it is a position in; no rank in it, so it is the same on every process
        at an optimizer-step boundary and resumes under any process count."""
        return {"version": STATE_VERSION, "sample": self.sample, "epoch": self.sample // self.per_epoch,
                "shards": [p.name for p in self.shards], "shard_tokens": [len(t) for t in self.tokens],
                "batch_size": self.B, "seq_len": self.T, "shuffle": self.shuffle, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        """Resume at a saved position; refused (one line) when it was saved for other shards or settings."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise Gpt2pipeError("the saved data-loader state is from an older gpt2pipe (no global sample position); "
                                "start the run over")
        mine = self.state_dict()
        for k in ("shards", "shard_tokens", "batch_size", "seq_len", "shuffle", "seed"):
            if state.get(k) != mine[k]:
                saved, now = state.get(k), mine[k]
                if k in ("shards", "shard_tokens"):  # name the size of the difference, not 100 file names
                    old = state.get("shard_tokens") or []
                    saved = f"{len(state.get('shards') or [])} shards of {sum(old):,} tokens"
                    now = f"{len(self.shards)} shards of {sum(mine['shard_tokens']):,} tokens"
                raise Gpt2pipeError(f"the saved data-loader state belongs to other {k} (saved: {saved}, now: {now})")
        sample = state.get("sample")
        if not isinstance(sample, int) or sample < 0:
            raise Gpt2pipeError(f"the saved data-loader position {sample!r} is not a sample index")
        self.sample = sample
        self.epoch = sample // self.per_epoch

    # --- order --------------------------------------------------------------------------------------
    def _epoch_plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """Shard visiting order of an epoch, cumulative window counts along it, and each visited shard's
        window order (identity without shuffling)."""
        if self._plan is None or self._plan[0] != epoch:
            n = len(self.shards)
            if self.shuffle:
                order, perms = self._shuffle.epoch(epoch)
            else:
                order, perms = np.arange(n), [np.arange(w) for w in self.windows]
            self._plan = (epoch, order, np.cumsum(self.windows[order]), perms)
        return self._plan[1], self._plan[2], self._plan[3]

    def locate(self, sample: int) -> tuple[int, int]:
        """(shard index, token offset) of a global sample."""
        epoch, j = divmod(sample, self.per_epoch)
        order, cum, perms = self._epoch_plan(epoch)
        k = int(np.searchsorted(cum, j, side="right"))  # first shard in order whose windows reach past j
        return int(order[k]), int(perms[k][j - (int(cum[k - 1]) if k else 0)]) * self.span

    # --- batches ------------------------------------------------------------------------------------
    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's next (inputs, targets), int64 (B, T) on the CPU."""
        epoch = self.sample // self.per_epoch
        if epoch != self.epoch:
            self.epoch = epoch
            if self.log:
                self.log(f"data: epoch {epoch} begins ({self.per_epoch:,} samples of {self.B}x{self.T} tokens per "
                         f"epoch, {'reshuffled' if self.shuffle else 'in order'})")
        shard, offset = self.locate(self.sample + self.rank)
        window = self.tokens[shard][offset : offset + self.span + 1]
        if int(window.max()) >= self.vocab_size:  # cheap next to a forward pass; catches foreign shards
            bad = int(np.argmax(window >= self.vocab_size))
            raise Gpt2pipeError(f"{self.shards[shard]}: token {int(window[bad])} at position {offset + bad} is "
                                f"outside the vocabulary ({self.vocab_size})")
        self.sample += self.world
        buf = torch.from_numpy(window.astype(np.int64))
        return buf[:-1].view(self.B, self.T), buf[1:].view(self.B, self.T)


def llmc_permutation(data: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
    """llm.c's `random_permutation` (llmc/rand.h), in place: Fisher-Yates from the end, j = randint32 % (i + 1)."""
    n = len(data)
    draws = rng.randint(0, 2**32, size=max(0, n - 1), dtype=np.uint32).tolist()  # raw 32-bit MT outputs
    for k, i in enumerate(range(n - 1, 0, -1)):
        j = draws[k] % (i + 1)
        data[i], data[j] = data[j], data[i]
    return data


class LlmcShuffle:
    """The shuffled order of llm.c's DataLoader, one epoch at a time. Its generator is consumed in a fixed
    sequence (at each epoch: the shard order, permuted in place, then each visited shard's windows from the
    identity), so the generator state at each epoch's start is kept to reach any epoch without replaying
    from the first."""

    def __init__(self, seed: int, windows: np.ndarray):
        self.windows = windows
        rng = np.random.RandomState(seed % 2**32)  # an int seed is MT19937's init_genrand, as llm.c's manual_seed
        self.starts = {0: (rng.get_state(), np.arange(len(windows)))}

    def epoch(self, epoch: int) -> tuple[np.ndarray, list[np.ndarray]]:
        e = max(k for k in self.starts if k <= epoch)
        state, shard_order = self.starts[e]
        rng = np.random.RandomState()
        rng.set_state(state)
        while True:
            order = llmc_permutation(shard_order.copy(), rng)
            perms = [llmc_permutation(np.arange(self.windows[s]), rng) for s in order]
            self.starts.setdefault(e + 1, (rng.get_state(), order))
            if e == epoch:
                return order, perms
            shard_order, e = order, e + 1
