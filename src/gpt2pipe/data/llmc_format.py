"""Stage 2: tokenize a corpus into llm.c data shards, and read them back safely.

Shard format (llm.c `dev/data/data_common.py`, little-endian): a header of 256 int32
(magic 20240520, version 1, number of tokens) followed by the tokens as uint16. Every document is
preceded by <|endoftext|> (50256); documents run across shard boundaries. Shard 0 is the validation split.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gpt2pipe import Gpt2pipeError
from gpt2pipe.config import DataConfig
from gpt2pipe.files import atomic_path, write_json
from gpt2pipe.data.tokenizer import VOCAB_SIZE, encode_document

MAGIC, VERSION = 20240520, 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
MAX_TOKENS_PER_FILE = 2**31 - 1  # the header's int32 count
MANIFEST = "shards.json"
DOCS_PER_TASK = 256  # documents per worker task: large enough to amortise IPC, small enough to stream


def _check_range(tokens: np.ndarray) -> None:
    if tokens.size and (tokens.min() < 0 or tokens.max() >= 2**16):
        raise ValueError("token values must fit in uint16")


class TokenFile:
    """Appends tokens to one llm.c-format file whose length is not known up front (bounded memory).

    Used as a context manager: the header is written on a clean exit and the file appears atomically;
    on an error nothing is left behind.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.count = 0
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> TokenFile:
        tmp = self._stack.enter_context(atomic_path(self.path))
        self._f = self._stack.enter_context(open(tmp, "wb"))
        self._f.write(bytes(HEADER_BYTES))
        return self

    def write(self, tokens: np.ndarray) -> None:
        tokens = np.asarray(tokens)
        _check_range(tokens)
        if self.count + tokens.size > MAX_TOKENS_PER_FILE:
            raise Gpt2pipeError(f"{self.path}: more than {MAX_TOKENS_PER_FILE} tokens do not fit an llm.c header")
        self._f.write(tokens.astype("<u2", copy=False).tobytes())
        self.count += tokens.size

    def __exit__(self, *exc) -> bool:
        if exc[0] is None:
            header = np.zeros(HEADER_INTS, dtype="<i4")
            header[:3] = (MAGIC, VERSION, self.count)
            self._f.seek(0)
            self._f.write(header.tobytes())
        return self._stack.__exit__(*exc)


def write_shard(path: str | Path, tokens: np.ndarray) -> None:
    """Write tokens (any int array with values < 2**16) as one llm.c shard, atomically."""
    with TokenFile(path) as f:
        f.write(tokens)


def read_shard(path: str | Path, vocab_size: int = VOCAB_SIZE, check_tokens: bool = True) -> np.ndarray:
    """Memory-map a shard's tokens after checking header, file size and (optionally) the token range."""
    path = Path(path)
    if not path.is_file():
        raise Gpt2pipeError(f"{path}: shard not found")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise Gpt2pipeError(f"{path}: corrupt shard, {size} bytes is shorter than the {HEADER_BYTES}-byte header")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if header[0] != MAGIC:
        raise Gpt2pipeError(f"{path}: not an llm.c data shard (magic {header[0]}, expected {MAGIC})")
    if header[1] != VERSION:
        raise Gpt2pipeError(f"{path}: unsupported shard version {header[1]} (expected {VERSION})")
    n = int(header[2])
    expected = HEADER_BYTES + 2 * n
    if size != expected:
        raise Gpt2pipeError(f"{path}: corrupt shard, header says {n} tokens ({expected} bytes) but the file has {size} bytes")
    tokens = np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(n,))
    if check_tokens and n and int(tokens.max()) >= vocab_size:
        bad = int(np.argmax(tokens >= vocab_size))
        raise Gpt2pipeError(f"{path}: token {int(tokens[bad])} at position {bad} is outside the vocabulary ({vocab_size})")
    return tokens


@dataclass
class ShardSet:
    """The shards of a dataset as listed by its manifest."""

    root: Path
    val: list[Path]
    train: list[Path]

    @classmethod
    def open(cls, root: str | Path) -> ShardSet:
        root = Path(root)
        manifest = root / MANIFEST
        if not manifest.is_file():
            raise Gpt2pipeError(f"{root}: no {MANIFEST} (run the tokenize stage first)")
        m = json.loads(manifest.read_text())
        s = cls(root, [root / f for f in m["val"]], [root / f for f in m["train"]])
        if not s.train:
            raise Gpt2pipeError(f"{manifest}: the dataset has no training shard (corpus smaller than the val split?)")
        return s


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
        from gpt2pipe.data.corpus import parquet_text_batches

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


class ShardWriter:
    """Streams tokens into <name>_{val,train}_NNNNNN.bin shards plus a manifest, as llm.c lays them out:
    shard 0 (val_tokens, default shard_tokens) is the validation split, then shard_tokens per train shard.
    Stops accepting tokens at data.max_tokens. Memory stays bounded: tokens go straight to the open shard."""

    def __init__(self, cfg: DataConfig, out_dir: str | Path):
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.out_dir.glob(f"{cfg.name}_*.bin"):
            stale.unlink()
        self.limit = cfg.max_tokens or float("inf")
        self.manifest = {"name": cfg.name, "tokenizer": "gpt2", "val": [], "train": [], "tokens": 0,
                         "shard_tokens": []}
        self._shard: TokenFile | None = None
        self._room = 0

    @property
    def full(self) -> bool:
        return self.manifest["tokens"] >= self.limit

    def add(self, toks: np.ndarray) -> None:
        toks = toks[: max(0, int(min(len(toks), self.limit - self.manifest["tokens"])))]
        self.manifest["tokens"] += len(toks)
        while len(toks):
            if self._shard is None:
                self._open()
            take = min(self._room, len(toks))
            self._shard.write(toks[:take])
            self._room -= take
            toks = toks[take:]
            if not self._room:
                self._close()

    def _open(self) -> None:
        i = len(self.manifest["shard_tokens"])
        split = "val" if i == 0 else "train"
        self._room = (self.cfg.val_tokens or self.cfg.shard_tokens) if i == 0 else self.cfg.shard_tokens
        self._shard = TokenFile(self.out_dir / f"{self.cfg.name}_{split}_{i:06d}.bin").__enter__()
        self.manifest[split].append(self._shard.path.name)

    def _close(self, *exc) -> None:
        shard, self._shard = self._shard, None
        shard.__exit__(*(exc or (None, None, None)))
        self.manifest["shard_tokens"].append(shard.count)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        if self._shard is not None:
            self._close(*exc)
        if exc[0] is not None:
            return
        if not self.manifest["train"]:
            raise Gpt2pipeError(
                f"dataset {self.cfg.name}: only {self.manifest['tokens']} tokens, all in the val shard; "
                "lower data.val_tokens so that training data remains"
            )
        write_json(self.out_dir / MANIFEST, self.manifest)


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
