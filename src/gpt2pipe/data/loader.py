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

With `document_aligned` (train.document_aligned) every row of T+1 tokens starts at a document boundary,
the <|endoftext|> token our and llm.c's shards put before each document. Each shard is cut into rows
greedily: a row starts at a document start, and the next row at the first document start at or after the
previous row's last input token (rows still share that one target token when a document starts exactly
there). The rest of a document cut by a row's end is skipped, and so is a shard's last partial row. A sample
is then B consecutive rows of a shard, and samples are drawn, shuffled and counted exactly as windows are.
Finding the documents reads every shard once at start.

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
from gpt2pipe.data.tokenizer import EOT

STATE_VERSION = 1


class ShardLoader:
    """Rank `rank` of `world_size`'s micro-batches; see the module docstring for the order."""

    def __init__(self, shards: Sequence[Path], batch_size: int, seq_len: int, rank: int = 0, world_size: int = 1,
                 *, shuffle: bool = False, seed: int = 0, vocab_size: int = 50257,
                 log: Callable[[str], None] | None = None, document_aligned: bool = False):
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
        self.document_aligned = document_aligned
        self.rows: list[np.ndarray] = []  # document-aligned: each shard's row starts
        if document_aligned:
            self.rows = [aligned_rows(t, self.T) for t in self.tokens]
            self.windows = np.array([len(r) // self.B for r in self.rows], dtype=np.int64)
        else:
            self.windows = np.array([max(0, (len(t) - 1) // self.span) for t in self.tokens], dtype=np.int64)
        self.per_epoch = int(self.windows.sum())
        if not self.per_epoch and document_aligned:
            raise Gpt2pipeError(f"{self.shards[0].parent}: no shard holds {self.B} document-aligned rows of "
                                f"{self.T}+1 tokens (documents start with token {EOT})")
        if not self.per_epoch:
            longest = max(len(t) for t in self.tokens)
            raise Gpt2pipeError(f"{self.shards[0].parent}: the largest shard holds {longest} tokens, fewer than one "
                                f"sample of {self.B}x{self.T}+1 = {self.span + 1} tokens needs")
        if document_aligned and log:
            total = sum(len(t) for t in self.tokens)
            log(f"data: document-aligned rows: {self.per_epoch:,} samples of {self.B}x{self.T} tokens per epoch, "
                f"{self.per_epoch * self.span / max(1, total):.1%} of the {total:,} train tokens")
        self._plan: tuple | None = None  # (epoch, shard order, cumulative windows, window orders)
        self._shuffle = LlmcShuffle(seed, self.windows)
        self.reset()

    # --- position -----------------------------------------------------------------------------------
    def reset(self) -> None:
        """Back to the very first sample (val_loss calls this before every evaluation)."""
        self.sample = 0  # global index of the sample process 0 reads next
        self.epoch = 0

    def state_dict(self, sample: int | None = None) -> dict:
        """The position (`sample`: another than the current one, e.g. before a batch read ahead) plus what it
        is a position in; no rank in it, so it is the same on every process at an optimizer-step boundary and
        resumes under any process count."""
        sample = self.sample if sample is None else sample
        return {"version": STATE_VERSION, "sample": sample, "epoch": sample // self.per_epoch,
                "shards": [p.name for p in self.shards], "shard_tokens": [len(t) for t in self.tokens],
                "batch_size": self.B, "seq_len": self.T, "shuffle": self.shuffle, "seed": self.seed,
                "document_aligned": self.document_aligned}

    def load_state_dict(self, state: dict) -> None:
        """Resume at a saved position; refused (one line) when it was saved for other shards or settings."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise Gpt2pipeError("the saved data-loader state is from an older gpt2pipe (no global sample position); "
                                "start the run over")
        mine = self.state_dict()
        state = {"document_aligned": False, **state}  # saved before the option existed: not aligned
        for k in ("shards", "shard_tokens", "batch_size", "seq_len", "shuffle", "seed", "document_aligned"):
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

    def window(self, sample: int) -> tuple[int, int]:
        """(shard index, window index in that shard) of a global sample."""
        epoch, j = divmod(sample, self.per_epoch)
        order, cum, perms = self._epoch_plan(epoch)
        k = int(np.searchsorted(cum, j, side="right"))  # first shard in order whose windows reach past j
        return int(order[k]), int(perms[k][j - (int(cum[k - 1]) if k else 0)])

    def locate(self, sample: int) -> tuple[int, int]:
        """(shard index, token offset) of a global sample (document-aligned: of its first row)."""
        shard, w = self.window(sample)
        return shard, int(self.rows[shard][w * self.B]) if self.document_aligned else w * self.span

    # --- batches ------------------------------------------------------------------------------------
    def epoch_begins(self, epoch: int) -> str:
        return (f"data: epoch {epoch} begins ({self.per_epoch:,} samples of {self.B}x{self.T} tokens per epoch, "
                f"{'reshuffled' if self.shuffle else 'in order'})")

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's next (inputs, targets), int64 (B, T) on the CPU."""
        epoch = self.sample // self.per_epoch
        if epoch != self.epoch:
            self.epoch = epoch
            if self.log:
                self.log(self.epoch_begins(epoch))
        shard, w = self.window(self.sample + self.rank)
        tokens = self.tokens[shard]
        if self.document_aligned:
            starts = self.rows[shard][w * self.B : (w + 1) * self.B]
            window = np.stack([tokens[r : r + self.T + 1] for r in starts])  # (B, T+1)
        else:
            starts = np.array([w * self.span])
            window = tokens[w * self.span : w * self.span + self.span + 1]
        if int(window.max()) >= self.vocab_size:  # cheap next to a forward pass; catches foreign shards
            flat = window.reshape(-1)
            bad = int(np.argmax(flat >= self.vocab_size))
            row, col = divmod(bad, window.shape[-1])  # the row it is in, and where in that row
            raise Gpt2pipeError(f"{self.shards[shard]}: token {int(flat[bad])} at position {int(starts[row]) + col} "
                                f"is outside the vocabulary ({self.vocab_size})")
        self.sample += self.world
        buf = torch.from_numpy(window.astype(np.int64))
        if self.document_aligned:
            return buf[:, :-1], buf[:, 1:]
        return buf[:-1].view(self.B, self.T), buf[1:].view(self.B, self.T)


def aligned_rows(tokens: np.ndarray, T: int, eot: int = EOT) -> np.ndarray:
    """Start positions of a shard's document-aligned rows of T+1 tokens: the first at the first document
    start, each next one at the first document start at or after the previous start + T; a row that would
    run past the shard's end is dropped."""
    starts = np.flatnonzero(tokens == eot)
    nxt = np.searchsorted(starts, starts + T).tolist()  # for each start, the index of the next row's
    fits = (starts + T + 1 <= len(tokens)).tolist()
    rows, i = [], 0
    while i < len(starts) and fits[i]:
        rows.append(i)
        i = nxt[i]
    return starts[rows].astype(np.int64)


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
