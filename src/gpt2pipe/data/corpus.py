"""Stage 1: gather a corpus into parquet files of documents (columns `id`, `text`, FineWeb's names).

Sources: local text files split into documents, local parquet files with a text column, any Hugging
Face text dataset through `datasets` (hf_dataset.py), or FineWeb on the hub (fineweb.py; the workflow
fetches and tokenizes FineWeb file by file instead, without this stage). Except for FineWeb, the
documents are shuffled with data.seed (doc_shuffle.py) unless data.shuffle_documents is false; a
document's id is `<data.name>/<its index in source order>` either way.

The folder is written under a temporary name and renamed when complete, so a failure leaves nothing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from gpt2pipe import Gpt2pipeError
from gpt2pipe.config import DataConfig
from gpt2pipe.data.inputs import inputs_problem, parquet_text_batches

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


def parquet_documents(path: Path, column: str = "text") -> Iterator[str]:
    """The non-empty documents of a parquet file's text column."""
    for batch in parquet_text_batches(path, column=column):
        yield from (t for t in batch.column(0).to_pylist() if t)


def _local_bytes(cfg: DataConfig) -> int:
    """Text size of local inputs (parquet: uncompressed), to size the shuffle's buckets."""
    if cfg.source != "parquet":
        return sum(Path(p).stat().st_size for p in cfg.paths)
    metas = [pq.ParquetFile(p).metadata for p in cfg.paths]
    return sum(m.row_group(i).total_byte_size for m in metas for i in range(m.num_row_groups))


def iter_documents(cfg: DataConfig, out_dir: Path) -> tuple[Iterator[str], int | None]:
    """The source's documents in source order, and their approximate size in bytes (None: unknown).

    Inputs are checked here, before any document is read."""
    if cfg.source == "fineweb":  # one file after another; the workflow runs them as parallel jobs instead
        from gpt2pipe.data import fineweb

        listing = fineweb.list_files(cfg.hf_repo, cfg.hf_subset, cfg.hf_revision)

        def fineweb_docs() -> Iterator[str]:
            for f in listing.files:
                raw = out_dir / "raw" / Path(f.path).name
                yield from parquet_documents(fineweb.download_file(listing, f.path, raw))

        return fineweb_docs(), None
    if cfg.source == "hf_dataset":
        from gpt2pipe.data import hf_dataset

        ds = hf_dataset.load(cfg)
        return hf_dataset.documents(ds, cfg.text_column), hf_dataset.approx_bytes(ds)
    if problem := inputs_problem(cfg):
        raise problem

    def local_docs() -> Iterator[str]:
        for p in map(Path, cfg.paths):
            yield from (text_documents(p, cfg.text_separator) if cfg.source == "text"
                        else parquet_documents(p, cfg.text_column))

    try:
        size = _local_bytes(cfg)
    except (pa.ArrowInvalid, OSError):  # an unreadable parquet file: reported by name when it is read
        size = None
    return local_docs(), size


@contextlib.contextmanager
def _staged_folder(out_dir: Path) -> Iterator[Path]:
    """A temporary sibling of out_dir that becomes out_dir on success; on failure it is removed, and so
    are the parent folders this created."""
    created = [p for p in [out_dir.parent, *out_dir.parent.parents] if not p.exists()]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; outputs get the usual permissions
    try:
        yield tmp
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for p in created:  # innermost first
            with contextlib.suppress(OSError):
                p.rmdir()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_corpus(cfg: DataConfig, out_dir: Path) -> list[Path]:
    """Write the corpus as out_dir/docs_NNNNN.parquet (shuffled unless data.shuffle_documents is false or
    the source is fineweb); returns the files written."""
    out_dir = Path(out_dir)
    with _staged_folder(out_dir) as tmp:
        docs, size = iter_documents(cfg, tmp)
        indexed: Iterator[tuple[int, str]] = enumerate(docs)
        if cfg.shuffle_documents and cfg.source != "fineweb":
            from gpt2pipe.data.doc_shuffle import shuffled

            indexed = shuffled(indexed, cfg.seed, tmp / ".shuffle", size)
        n_files = _write_files(indexed, cfg.name, tmp)
        if not n_files:
            raise Gpt2pipeError(f"data.source {cfg.source}: the corpus has no documents"
                                + (f" (data.paths {cfg.paths})" if cfg.source in ("text", "parquet") else ""))
    return [out_dir / f"docs_{i:05d}.parquet" for i in range(n_files)]


def _write_files(docs: Iterator[tuple[int, str]], name: str, out_dir: Path) -> int:
    """(index, text) documents into docs_NNNNN.parquet files of DOCS_PER_FILE; returns the file count."""
    n = 0
    batch: list[tuple[int, str]] = []

    def flush() -> None:
        nonlocal n
        ids, texts = zip(*batch)
        pq.write_table(pa.table({"id": [f"{name}/{i}" for i in ids], "text": list(texts)}),
                       out_dir / f"docs_{n:05d}.parquet")
        n += 1
        batch.clear()

    for doc in docs:
        batch.append(doc)
        if len(batch) == DOCS_PER_FILE:
            flush()
    if batch:
        flush()
    return n


def read_corpus(corpus_dir: Path) -> Iterator[str]:
    """Documents of a corpus folder written by write_corpus, in order."""
    files = sorted(Path(corpus_dir).glob("docs_*.parquet"))
    if not files:
        raise Gpt2pipeError(f"{corpus_dir}: no docs_*.parquet files (run the corpus stage first)")
    for f in files:
        yield from parquet_documents(f)
