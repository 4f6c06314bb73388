"""Stage 1: gather a corpus into parquet files of documents (columns `id`, `text`, FineWeb's names).

Sources: local text files split into documents, local parquet files with a `text` column, or the
FineWeb dataset on the Hugging Face hub (see fineweb.py; the workflow fetches and tokenizes FineWeb
file by file instead, without this stage).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from gpt2pipe import Gpt2pipeError
from gpt2pipe.config import DataConfig
from gpt2pipe.files import atomic_path

DOCS_PER_FILE = 100_000


def text_documents(path: Path, separator: str | None) -> Iterator[str]:
    """Documents of a UTF-8 text file: split at `separator`, stripped, empty ones dropped."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise Gpt2pipeError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    parts = text.split(separator) if separator else [text]
    for part in parts:
        part = part.strip()
        if part:
            yield part


def parquet_text_batches(path: Path, batch_size: int | None = None) -> Iterator[pa.RecordBatch]:
    """The `text` column of a parquet file in record batches (bounded memory), after checking the file."""
    try:
        f = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise Gpt2pipeError(f"{path}: not a readable parquet file ({e})") from None
    if "text" not in f.schema_arrow.names:
        raise Gpt2pipeError(f"{path}: parquet file has no 'text' column (columns: {f.schema_arrow.names})")
    yield from f.iter_batches(**({"batch_size": batch_size} if batch_size else {}), columns=["text"])


def parquet_documents(path: Path) -> Iterator[str]:
    """The non-empty documents of a parquet file's `text` column."""
    for batch in parquet_text_batches(path):
        yield from (t for t in batch.column(0).to_pylist() if t)


def iter_documents(cfg: DataConfig, out_dir: Path) -> Iterator[str]:
    if cfg.source == "fineweb":  # one file after another; the workflow runs them as parallel jobs instead
        from gpt2pipe.data import fineweb

        listing = fineweb.list_files(cfg.hf_repo, cfg.hf_subset, cfg.hf_revision)
        for f in listing.files:
            yield from parquet_documents(fineweb.download_file(listing, f.path, out_dir / "raw" / Path(f.path).name))
        return
    if not cfg.paths:
        raise Gpt2pipeError(f"data.paths is empty: source '{cfg.source}' needs input files")
    for p in map(Path, cfg.paths):
        if not p.is_file():
            raise Gpt2pipeError(f"{p}: corpus file not found")
    for p in map(Path, cfg.paths):
        yield from (text_documents(p, cfg.text_separator) if cfg.source == "text" else parquet_documents(p))


def write_corpus(cfg: DataConfig, out_dir: Path) -> list[Path]:
    """Write the corpus as out_dir/docs_NNNNN.parquet; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    batch: list[str] = []

    def flush() -> None:
        path = out_dir / f"docs_{len(written):05d}.parquet"
        start = len(written) * DOCS_PER_FILE
        table = pa.table({"id": [f"{cfg.name}/{start + i}" for i in range(len(batch))], "text": batch})
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        written.append(path)
        batch.clear()

    for doc in iter_documents(cfg, out_dir):
        batch.append(doc)
        if len(batch) == DOCS_PER_FILE:
            flush()
    if batch or not written:
        if not batch and not written:
            raise Gpt2pipeError(f"data.paths {cfg.paths}: the corpus has no documents")
        flush()
    return written


def read_corpus(corpus_dir: Path) -> Iterator[str]:
    """Documents of a corpus folder written by write_corpus, in order."""
    files = sorted(Path(corpus_dir).glob("docs_*.parquet"))
    if not files:
        raise Gpt2pipeError(f"{corpus_dir}: no docs_*.parquet files (run the corpus stage first)")
    for f in files:
        yield from parquet_documents(f)
