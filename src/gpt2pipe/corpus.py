"""Stage 1: gather a corpus into parquet files of documents (columns `id`, `text`, FineWeb's names).

Sources: local text files split into documents, local parquet files with a `text` column, or the
FineWeb dataset on the Hugging Face hub (files fetched one by one with huggingface_hub).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from . import Gpt2pipeError
from .config import DataConfig
from .io import atomic_path

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


def parquet_documents(path: Path) -> Iterator[str]:
    """The `text` column of a parquet file, read a row group at a time (bounded memory)."""
    try:
        f = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise Gpt2pipeError(f"{path}: not a readable parquet file ({e})") from None
    if "text" not in f.schema_arrow.names:
        raise Gpt2pipeError(f"{path}: parquet file has no 'text' column (columns: {f.schema_arrow.names})")
    for batch in f.iter_batches(columns=["text"]):
        yield from (t for t in batch.column(0).to_pylist() if t)


def fineweb_files(repo: str, subset: str, revision: str, api=None) -> list[str]:
    """Parquet files of one FineWeb subset in the hub repository, in sorted order.

    `api` is a huggingface_hub.HfApi (or a stand-in in tests): the one seam to the network.
    Subsets are folders such as `sample/10BT` (named `sample-10BT` in the dataset card) or `data/CC-MAIN-...`.
    """
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    folder = subset.replace("sample-", "sample/", 1) if subset.startswith("sample-") else f"data/{subset}"
    files = api.list_repo_files(repo, repo_type="dataset", revision=revision)
    chosen = sorted(f for f in files if fnmatch.fnmatch(f, f"{folder}/*.parquet"))
    if not chosen:
        raise Gpt2pipeError(f"{repo}@{revision}: no parquet files under {folder}/")
    return chosen


def download_fineweb(cfg: DataConfig, out_dir: Path, api=None, download=None) -> list[Path]:
    """Fetch the subset's parquet files into out_dir/raw (resumable, cached by huggingface_hub)."""
    if download is None:
        from huggingface_hub import hf_hub_download as download
    local = []
    for name in fineweb_files(cfg.hf_repo, cfg.hf_subset, cfg.hf_revision, api=api):
        local.append(Path(download(cfg.hf_repo, name, repo_type="dataset", revision=cfg.hf_revision,
                                   local_dir=out_dir / "raw")))
    return local


def iter_documents(cfg: DataConfig, out_dir: Path) -> Iterator[str]:
    if cfg.source == "fineweb":
        for path in download_fineweb(cfg, out_dir):
            yield from parquet_documents(path)
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
