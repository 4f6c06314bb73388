"""A seeded shuffle of a document stream larger than memory (data.shuffle_documents).

Local corpora are usually stored in some order (by source, date, book); sharded as they are, the val
shard and each train shard hold one stretch of that order. FineWeb shuffles its documents during its
own processing; this does the same for ours before the shards are cut.

Every document gets a random 64-bit key from one seeded stream, and the output is the documents sorted
by key: a uniformly random permutation. Sorting is external: keys pick one of 2**bits bucket files by
their top bits, and each bucket (small enough for memory) is sorted on its own. The result depends only
on the seed and the input documents, not on the bucket count or on memory limits.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

BUCKET_BYTES = 128 << 20  # text per bucket: what pass 2 holds in memory at once
FLUSH_BYTES = 64 << 20  # text buffered over all buckets in pass 1 before it goes to disk
READ_DOCS = 4096  # documents keyed at a time
_SCHEMA = pa.schema([("key", pa.uint64()), ("index", pa.int64()), ("text", pa.large_string())])


def bucket_bits(approx_bytes: int | None) -> int:
    """Bits of the key that choose a bucket: enough buckets of about BUCKET_BYTES (64 when unknown)."""
    if approx_bytes is None:
        return 6
    return min(12, max(0, math.ceil(math.log2(max(1, approx_bytes) / BUCKET_BYTES))))


class _Buckets:
    """Pass 1: (key, index, text) rows appended to one parquet file per bucket, buffered in memory."""

    def __init__(self, work_dir: Path, bits: int):
        self.work_dir, self.bits = work_dir, bits
        self.rows: dict[int, list[tuple[int, int, str]]] = {}
        self.writers: dict[int, pq.ParquetWriter] = {}
        self.buffered = 0

    def add(self, keys: np.ndarray, docs: list[tuple[int, str]]) -> None:
        buckets = (keys >> np.uint64(64 - self.bits)).tolist() if self.bits else [0] * len(docs)
        for key, b, (index, text) in zip(keys.tolist(), buckets, docs):
            self.rows.setdefault(b, []).append((key, index, text))
            self.buffered += len(text)
        if self.buffered >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        for b, rows in self.rows.items():
            if b not in self.writers:
                self.writers[b] = pq.ParquetWriter(self.path(b), _SCHEMA)
            key, index, text = zip(*rows)
            self.writers[b].write_table(pa.table([pa.array(key, pa.uint64()), pa.array(index, pa.int64()),
                                                  pa.array(text, pa.large_string())], schema=_SCHEMA))
        self.rows.clear()
        self.buffered = 0

    def close(self) -> None:
        self.flush()
        for w in self.writers.values():
            w.close()

    def path(self, b: int) -> Path:
        return self.work_dir / f"bucket_{b:05d}.parquet"


def shuffled(docs: Iterable[tuple[int, str]], seed: int, work_dir: Path,
             approx_bytes: int | None = None) -> Iterator[tuple[int, str]]:
    """(index, text) documents in a seeded random order, using work_dir for the buckets (removed after)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    buckets = _Buckets(work_dir, bucket_bits(approx_bytes))
    try:
        it = iter(docs)
        while chunk := list(islice(it, READ_DOCS)):
            # raw 64-bit draws: the key stream does not depend on how the documents are chunked
            buckets.add(rng.bit_generator.random_raw(len(chunk)), chunk)
        buckets.close()
        for b in sorted(buckets.writers):
            table = pq.read_table(buckets.path(b))
            order = np.argsort(table.column("key").to_numpy(), kind="stable")  # ties: input order
            index, text = table.column("index").to_pylist(), table.column("text").to_pylist()
            del table
            for i in order.tolist():
                yield index[i], text[i]
            buckets.path(b).unlink()
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
