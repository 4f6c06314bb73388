"""Stage 2: tokenize documents into llm.c shards with a pool of encoder processes.

The pool keeps document order (imap), so the shards are the same whatever the worker count; the
shard and manifest I/O is llmc_format's.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections import deque
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

import numpy as np

from gpt2pipe import Gpt2pipeError
from gpt2pipe.config import DataConfig
from gpt2pipe.data.llmc_format import MAX_TOKENS_PER_FILE, ShardWriter, TokenFile, read_shard
from gpt2pipe.data.tokenizer import encode_document
from gpt2pipe.progress import tqdm

DOCS_PER_TASK = 256  # documents per worker task: large enough to amortise IPC, small enough to stream


def _encode_task(texts) -> np.ndarray:
    """Documents (a list of str, or an Arrow string array) -> their tokens, each after <|endoftext|>.

    One document at a time on this process's one thread (tiktoken's batch call would start 8), so
    `workers` is the core count."""
    if not isinstance(texts, list):
        texts = texts.to_pylist()  # Arrow -> str happens here, in the worker, not in the parent
    docs = [encode_document(t) for t in texts if t]
    out = np.empty(sum(map(len, docs)), dtype=np.uint16)
    pos = 0
    for d in docs:
        out[pos : pos + len(d)] = d
        pos += len(d)
    return out


def _chunks(docs: Iterable[str], n: int) -> Iterator[list[str]]:
    it = iter(docs)
    while chunk := list(islice(it, n)):
        yield chunk


class ArrowChunks:
    """A parquet file's `text` column as Arrow arrays of n rows: they pickle as flat buffers, so the
    parent process only reads and forwards while the workers decode and encode."""

    def __init__(self, path: Path, n: int):
        self.path, self.n = path, n

    def __iter__(self) -> Iterator:
        from gpt2pipe.data.inputs import parquet_text_batches

        return (batch.column(0) for batch in parquet_text_batches(self.path, self.n))


def encoded_chunks(docs: Iterable, workers: int, with_counts: bool = False) -> Iterator:
    """Token arrays for consecutive chunks of documents, in input order, from `workers` processes
    (0 = one per core). `docs` yields documents (str), or ready-made chunks (Arrow string arrays).
    With `with_counts`, (documents in the chunk, tokens) pairs."""
    workers = workers or os.cpu_count() or 1
    sizes: deque[int] = deque()  # imap keeps order, so chunk sizes pair up with results first-in first-out

    def chunks() -> Iterator:
        for c in docs if isinstance(docs, ArrowChunks) else _chunks(docs, DOCS_PER_TASK):
            sizes.append(len(c))
            yield c

    if workers == 1:
        results = map(_encode_task, chunks())
        yield from ((sizes.popleft(), t) for t in results) if with_counts else results
        return
    # spawn: the parent may hold threads (torch, tiktoken) that fork would copy in a broken state
    with mp.get_context("spawn").Pool(workers) as pool:
        results = pool.imap(_encode_task, chunks(), chunksize=4)
        yield from ((sizes.popleft(), t) for t in results) if with_counts else results


def tokenize_to_shards(docs: Iterable[str], cfg: DataConfig, out_dir: str | Path) -> dict:
    """Tokenize documents into out_dir/<name>_{val,train}_NNNNNN.bin plus a manifest; returns the manifest."""
    with ShardWriter(cfg, out_dir) as w, tqdm(desc=f"tokenize {cfg.name}", unit="tok", unit_scale=True,
                                              dynamic_ncols=True) as bar:
        for toks in encoded_chunks(docs, cfg.workers):
            w.add(toks)
            bar.update(len(toks))
            if w.full:
                break
    return w.manifest


def encode_parquet(path: str | Path, out: str | Path, workers: int = 0, max_tokens: int | None = None,
                   progress: bool = True) -> int:
    """Tokenize one parquet file of documents into one llm.c-format token file, streaming row groups.

    The file holds the documents' tokens back to back, each after <|endoftext|>, exactly as they will
    go into the shards. `max_tokens` stops early (a run that needs fewer tokens than the file has).
    Returns the number of tokens written.
    """
    import pyarrow.parquet as pq

    path = Path(path)
    rows = pq.ParquetFile(path).metadata.num_rows if path.is_file() else None
    limit = max_tokens or MAX_TOKENS_PER_FILE
    with TokenFile(out) as f, tqdm(total=rows, desc=f"encode {path.name}", unit="doc", unit_scale=True,
                                   disable=not progress, dynamic_ncols=True) as bar:
        for n_docs, toks in encoded_chunks(ArrowChunks(path, DOCS_PER_TASK), workers, with_counts=True):
            f.write(toks[: limit - f.count])
            bar.update(n_docs)
            bar.set_postfix(tokens=f"{f.count:,}", refresh=False)
            if f.count >= limit:
                break
        return f.count


def shards_from_token_files(paths: Iterable[str | Path], cfg: DataConfig, out_dir: str | Path,
                            progress: bool = True) -> dict:
    """Concatenate per-file token files (from encode_parquet), in order, into shards; returns the manifest.

    Every file is checked (header, size, token range) before the first shard is written."""
    files = [read_shard(p) for p in paths]
    if not files:
        raise Gpt2pipeError("no token files to shard")
    total = min(sum(len(t) for t in files), cfg.max_tokens or float("inf"))
    n = 1 << 24  # 32 MiB of tokens at a time
    chunks = (toks[start : start + n] for toks in files for start in range(0, len(toks), n))
    with ShardWriter(cfg, out_dir) as w, tqdm(total=total, desc=f"shard {cfg.name}", unit="tok", unit_scale=True,
                                              disable=not progress, dynamic_ncols=True) as bar:
        for chunk in chunks:
            before = w.manifest["tokens"]
            w.add(np.asarray(chunk))
            bar.update(w.manifest["tokens"] - before)
            if w.full:
                break
    return w.manifest
