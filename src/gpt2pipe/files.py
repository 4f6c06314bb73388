"""Small file helpers shared by the stages: atomic, durable writes, so a crash never leaves a half-written output."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from gpt2pipe import Gpt2pipeError


_UMASK = os.umask(0)
os.umask(_UMASK)


def fsync_path(path: str | Path, directory: bool = False) -> None:
    """Flush a file's (or a folder's entries') data to disk."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path next to `path`; on success it is flushed to disk and renamed onto `path` (and the
    rename flushed too), on error removed. After a crash `path` is either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield Path(tmp)
        if os.path.isfile(tmp):
            fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent, directory=True)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def size_text(n: int) -> str:
    """Bytes as people read them: 80.1 GB, 12.0 MB, 512 bytes."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def count_text(n: int) -> str:
    """A count as people read it, three significant digits: 10B, 1.57M, 61.4K, 600."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def free_bytes(folder: str | Path) -> int:
    return shutil.disk_usage(folder).free


def jsonl_objects(path: Path, expected: str):
    """(line number, object) of each non-blank line of a UTF-8 jsonl file; a line that is not JSON, or not an
    object, ends in one line naming file:line (`expected` says what a row should be)."""
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise Gpt2pipeError(f"{path}:{n}: not JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise Gpt2pipeError(f"{path}:{n}: expected {expected}")
            yield n, row


def content_digest(path: str | Path) -> str:
    """sha256 (16 hex digits) of a file, or of a folder's files (names and contents, in name order): a
    starting model may be one .pt/.bin file or a Hugging Face folder."""
    import hashlib

    path = Path(path)
    if not path.is_dir():
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()[:16]
    h = hashlib.sha256()
    # not dot-paths: a hub download's .cache/ metadata changes when the same weights are fetched again
    files = (p for p in path.rglob("*")
             if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
    for p in sorted(files):
        h.update(f"{p.relative_to(path)}\0{content_digest(p)}\0".encode())
    return h.hexdigest()[:16]
