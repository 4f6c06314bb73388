"""Stage 2: tokenize a corpus into llm.c data shards, and read them back safely.

Shard format (llm.c `dev/data/data_common.py`, little-endian): a header of 256 int32
(magic 20240520, version 1, number of tokens) followed by the tokens as uint16. Every document is
preceded by <|endoftext|> (50256); documents run across shard boundaries. Shard 0 is the validation split.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import Gpt2pipeError
from .config import DataConfig
from .io import atomic_path, write_json
from .tokenizer import VOCAB_SIZE, encode_documents

MAGIC, VERSION = 20240520, 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
MANIFEST = "shards.json"
DOCS_PER_TASK = 256  # documents per worker task: large enough to amortise IPC, small enough to stream


def write_shard(path: str | Path, tokens: np.ndarray) -> None:
    """Write tokens (any int array with values < 2**16) as one llm.c shard, atomically."""
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= 2**16):
        raise ValueError("token values must fit in uint16")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (MAGIC, VERSION, tokens.size)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype("<u2", copy=False).tobytes())


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


def _encode_task(texts: list[str]) -> np.ndarray:
    return np.fromiter((t for doc in encode_documents(texts) for t in doc), dtype=np.uint16)


def _chunks(docs: Iterable[str], n: int) -> Iterator[list[str]]:
    it = iter(docs)
    while chunk := list(islice(it, n)):
        yield chunk


def encoded_chunks(docs: Iterable[str], workers: int) -> Iterator[np.ndarray]:
    """Token arrays for consecutive chunks of documents, in input order, from `workers` processes."""
    workers = workers or os.cpu_count() or 1
    chunks = _chunks(docs, DOCS_PER_TASK)
    if workers == 1:
        yield from map(_encode_task, chunks)
        return
    # spawn: the parent may hold threads (torch, tiktoken) that fork would copy in a broken state
    with mp.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(_encode_task, chunks, chunksize=4)


def tokenize_to_shards(docs: Iterable[str], cfg: DataConfig, out_dir: str | Path) -> dict:
    """Tokenize documents into out_dir/<name>_{val,train}_NNNNNN.bin plus a manifest; returns the manifest."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(f"{cfg.name}_*.bin"):
        stale.unlink()
    limit = cfg.max_tokens or float("inf")
    sizes = lambda i: (cfg.val_tokens or cfg.shard_tokens) if i == 0 else cfg.shard_tokens  # noqa: E731
    manifest = {"name": cfg.name, "tokenizer": "gpt2", "val": [], "train": [], "tokens": 0, "shard_tokens": []}
    buf = np.empty(sizes(0), dtype=np.uint16)
    fill = 0

    def flush() -> None:
        nonlocal buf, fill
        i = len(manifest["val"]) + len(manifest["train"])
        split = "val" if i == 0 else "train"
        name = f"{cfg.name}_{split}_{i:06d}.bin"
        write_shard(out_dir / name, buf[:fill])
        manifest[split].append(name)
        manifest["shard_tokens"].append(fill)
        manifest["tokens"] += fill
        buf, fill = np.empty(sizes(i + 1), dtype=np.uint16), 0

    with tqdm(desc=f"tokenize {cfg.name}", unit="tok", unit_scale=True, dynamic_ncols=True) as bar:
        total = 0
        for toks in encoded_chunks(docs, cfg.workers):
            if total + len(toks) > limit:
                toks = toks[: int(limit - total)]
            total += len(toks)
            bar.update(len(toks))
            while len(toks):
                take = min(len(buf) - fill, len(toks))
                buf[fill : fill + take] = toks[:take]
                fill += take
                toks = toks[take:]
                if fill == len(buf):
                    flush()
            if total >= limit:
                break
    if fill:
        flush()
    if not manifest["train"]:
        raise Gpt2pipeError(
            f"dataset {cfg.name}: only {manifest['tokens']} tokens, all in the val shard; "
            "lower data.val_tokens so that training data remains"
        )
    write_json(out_dir / MANIFEST, manifest)
    return manifest
