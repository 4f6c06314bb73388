"""The check that a text/parquet run's corpus files exist and hold text, before any stage reads them.

`gpt2pipe config` and the corpus stage run it; it reads each file only up to its first text, so it costs little
on large corpora, and imports pyarrow only for parquet inputs."""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from pathlib import Path

from gpt2pipe import Gpt2pipeError
from gpt2pipe.config import Config, DataConfig
from gpt2pipe.schema import Problem


def corpus_problem(cfg: Config) -> Problem | None:
    """inputs_problem of a whole config (a config.load check)."""
    return inputs_problem(cfg.data)


def inputs_problem(cfg: DataConfig) -> Problem | None:
    """The first local input (source text or parquet) that is missing or holds no text, in one line naming
    data.paths, or None: checked by `gpt2pipe config` and before the corpus stage reads anything."""
    if cfg.source not in ("text", "parquet"):
        return None
    if not cfg.paths:
        return Problem(f"data.paths is empty: data.source {cfg.source} needs input files", ("data.paths",))
    for path in map(Path, cfg.paths):
        if (why := _no_text(path, cfg)) is not None:
            return Problem(f"data.paths: {path}: {why}", ("data.paths",))
    return None


def _no_text(path: Path, cfg: DataConfig) -> str | None:
    """Why the file holds no documents (reading only until the first one), or None."""
    if not path.exists():
        return "not found"
    if not path.is_file():
        return "not a file"
    if cfg.source == "parquet":
        try:
            next(parquet_text_batches(path, column=cfg.text_column))
        except Gpt2pipeError as e:
            return str(e).removeprefix(f"{path}: ")
        except StopIteration:
            return "holds no rows"
        return None
    decoder = codecs.getincrementaldecoder("utf-8")()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            try:
                if decoder.decode(chunk).strip():
                    return None
            except UnicodeDecodeError as e:
                return f"not UTF-8 text ({e.reason})"
    return "holds no text (empty, or only whitespace)"


def parquet_text_batches(path: Path, batch_size: int | None = None, column: str = "text") -> Iterator:
    """One text column of a parquet file in record batches (bounded memory), after checking the file."""
    import pyarrow as pa  # (here, not at the top: text inputs are checked without pyarrow)
    import pyarrow.parquet as pq

    try:
        f = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise Gpt2pipeError(f"{path}: not a readable parquet file ({e})") from None
    if column not in f.schema_arrow.names:
        raise Gpt2pipeError(f"{path}: parquet file has no {column!r} column (columns: {f.schema_arrow.names}; "
                            "set data.text_column)")
    yield from f.iter_batches(**({"batch_size": batch_size} if batch_size else {}), columns=[column])
