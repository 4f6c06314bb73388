"""llm.c's token-file format: write shards and their manifest, open them safely, find them in a folder.

Format (llm.c `dev/data/data_common.py`, little-endian): a header of 256 int32 (magic 20240520, version 1,
number of tokens) followed by the tokens as uint16. Every document is preceded by <|endoftext|> (50256);
documents run across shard boundaries. Shard 0 is the validation split.

Tokens are range-checked once, when written, and the largest id goes into the manifest (`shards.json`);
opening a shard for training checks only its header and size, so a 20 GB dataset opens instantly.
"""

from __future__ import annotations

import contextlib
import glob
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpt2pipe import Gpt2pipeError
from gpt2pipe.config import DataConfig
from gpt2pipe.data.tokenizer import VOCAB_SIZE
from gpt2pipe.files import atomic_path, write_json

MAGIC, VERSION = 20240520, 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
MAX_TOKENS_PER_FILE = 2**31 - 1  # the header's int32 count
MANIFEST = "shards.json"


class TokenFile:
    """Appends tokens to one llm.c-format file whose length is not known up front (bounded memory).

    Used as a context manager: the header is written on a clean exit and the file appears atomically;
    on an error nothing is left behind. `max_token` is the largest id written (-1 while empty).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.count = 0
        self.max_token = -1
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> TokenFile:
        tmp = self._stack.enter_context(atomic_path(self.path))
        self._f = self._stack.enter_context(open(tmp, "wb"))
        self._f.write(bytes(HEADER_BYTES))
        return self

    def write(self, tokens: np.ndarray) -> None:
        tokens = np.asarray(tokens)
        if not tokens.size:
            return
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= 2**16:
            raise ValueError("token values must fit in uint16")
        if self.count + tokens.size > MAX_TOKENS_PER_FILE:
            raise Gpt2pipeError(f"{self.path}: more than {MAX_TOKENS_PER_FILE} tokens do not fit an llm.c header")
        self._f.write(tokens.astype("<u2", copy=False).tobytes())
        self.count += tokens.size
        self.max_token = max(self.max_token, hi)

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
    """Memory-map a shard's tokens after checking header and file size, and (unless `check_tokens` is
    False, which reads no token) that every token is below vocab_size."""
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
    if n < 0 or size != expected:
        raise Gpt2pipeError(f"{path}: corrupt shard, header says {n} tokens ({expected} bytes) but the file has {size} bytes")
    if n == 0:  # np.memmap refuses an empty mapping
        return np.zeros(0, dtype="<u2")
    tokens = np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(n,))
    if check_tokens and int(tokens.max()) >= vocab_size:
        bad = int(np.argmax(tokens >= vocab_size))
        raise Gpt2pipeError(f"{path}: token {int(tokens[bad])} at position {bad} is outside the vocabulary ({vocab_size})")
    return tokens


@dataclass
class ShardSet:
    """The shards of a dataset: as listed by its manifest, or llm.c's files found by name or glob.

    `max_token` is the largest token id, recorded when the shards were written (None without a manifest:
    the loader then checks every batch it reads)."""

    root: Path
    val: list[Path]
    train: list[Path]
    max_token: int | None = None

    @classmethod
    def open(cls, root: str | Path, vocab_size: int | None = None) -> ShardSet:
        """A folder with shards.json; a folder of llm.c shards (`*_val_*.bin`, `*_train_*.bin`); or a glob
        as llm.c's `-i` takes (e.g. 'fineweb10B/fineweb_*.bin'). Every shard's header is checked here."""
        text = str(root)
        root = Path(root)
        if any(c in text for c in "*?[") and not root.exists():
            s = cls._from_files(root.parent, sorted(Path(p) for p in glob.glob(text)), text)
        elif not root.exists():
            raise Gpt2pipeError(f"{root}: shards folder not found (run the tokenize stage first, or pass a folder or "
                                "glob of llm.c shards)")
        elif not root.is_dir():
            raise Gpt2pipeError(f"{root}: not a folder of shards (pass the folder, or a glob of .bin files)")
        elif (root / MANIFEST).is_file():
            s = cls._from_manifest(root)
        else:
            s = cls._from_files(root, sorted(root.glob("*_val_*.bin")) + sorted(root.glob("*_train_*.bin")), str(root))
        for p in s.val + s.train:
            read_shard(p, check_tokens=False)
        if vocab_size is not None and s.max_token is not None and s.max_token >= vocab_size:
            raise Gpt2pipeError(f"{root}: the shards hold token id {s.max_token}, outside the model's vocabulary "
                                f"({vocab_size})")
        return s

    @classmethod
    def _from_manifest(cls, root: Path) -> ShardSet:
        manifest = root / MANIFEST
        try:
            m = json.loads(manifest.read_text())
            val, train = [root / f for f in m["val"]], [root / f for f in m["train"]]
        except (ValueError, KeyError, TypeError) as e:
            raise Gpt2pipeError(f"{manifest}: not a shard manifest ({type(e).__name__}: {e})") from None
        if not train:
            raise Gpt2pipeError(f"{manifest}: the dataset has no training shard (corpus smaller than the val split?)")
        return cls(root, val, train, m.get("max_token"))

    @classmethod
    def _from_files(cls, root: Path, files: list[Path], where: str) -> ShardSet:
        """llm.c's naming decides the split: `_val_` in the name is validation, everything else trains."""
        val = [p for p in files if "_val_" in p.name]
        train = [p for p in files if "_val_" not in p.name]
        if not train:
            raise Gpt2pipeError(f"{where}: no llm.c training shards (*_train_*.bin) and no {MANIFEST}")
        if not val:
            raise Gpt2pipeError(f"{where}: no validation shard (*_val_*.bin) among {len(train)} shard(s); "
                                "widen the glob to include it, e.g. 'dir/fineweb_*.bin'")
        return cls(root, val, train)


class ShardWriter:
    """Streams tokens into <name>_{val,train}_NNNNNN.bin shards plus a manifest, as llm.c lays them out:
    shard 0 (val_tokens, default shard_tokens) is the validation split, then shard_tokens per train shard.
    Stops accepting tokens at data.max_tokens. Memory stays bounded: tokens go straight to the open shard.
    The manifest records each shard's token count and the largest token id (the check done once)."""

    def __init__(self, cfg: DataConfig, out_dir: str | Path, extra: dict | None = None):
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # a manifest-less folder is read as llm.c shards: no stale manifest or shard may outlive a rewrite
        for stale in [*self.out_dir.glob(f"{cfg.name}_*.bin"), self.out_dir / MANIFEST]:
            stale.unlink(missing_ok=True)
        self.limit = cfg.max_tokens or float("inf")
        self.manifest = {"name": cfg.name, "tokenizer": "gpt2", "val": [], "train": [], "tokens": 0,
                         "shard_tokens": [], "max_token": -1, **(extra or {})}
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
        self.manifest["max_token"] = max(self.manifest["max_token"], shard.max_token)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        if self._shard is not None:
            self._close(*exc)
        if exc[0] is not None:  # finished shards of a failed run would pass for a (smaller) dataset
            for name in self.manifest["val"] + self.manifest["train"]:
                (self.out_dir / name).unlink(missing_ok=True)
            return
        if not self.manifest["train"]:
            raise Gpt2pipeError(
                f"dataset {self.cfg.name}: only {self.manifest['tokens']} tokens, all in the val shard; "
                "lower data.val_tokens so that training data remains"
            )
        write_json(self.out_dir / MANIFEST, self.manifest)
