"""data.source hf_dataset: any Hugging Face text dataset, through the `datasets` library.

`datasets.load_dataset` downloads and prepares the dataset once into its cache (HF_HOME /
HF_DATASETS_CACHE), honours offline mode (HF_DATASETS_OFFLINE=1: the cache only) and HF_TOKEN, and
reads local folders of jsonl/json/parquet/csv/txt files the same way. The prepared Arrow files are
memory-mapped, so documents stream out in batches whatever the dataset's size. datasets >= 4 runs no
dataset loading scripts, so naming a dataset executes none of its code.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from gpt2pipe import Gpt2pipeError
from gpt2pipe.config import DataConfig

BATCH = 1000  # rows per Arrow batch read


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def load(cfg: DataConfig):
    """The configured split as a datasets.Dataset, its text column checked."""
    if not cfg.hf_dataset:
        raise Gpt2pipeError("data.hf_dataset is not set: source hf_dataset needs a dataset name or a local folder")
    import datasets

    name, split = cfg.hf_dataset, cfg.hf_split
    where = f"data.hf_dataset {name}" + (f" ({cfg.hf_config})" if cfg.hf_config else "")
    local = Path(name).exists()
    try:
        if local and ((Path(name) / "dataset_dict.json").is_file() or (Path(name) / "state.json").is_file()):
            ds = datasets.load_from_disk(name)  # a save_to_disk folder, not files to parse
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[split]
        else:
            ds = datasets.load_dataset(name, cfg.hf_config, split=split,
                                       **({} if local else {"revision": cfg.hf_revision}))
    except Exception as e:  # not found, no such split or config, offline without a cache: one line
        offline = datasets.config.HF_DATASETS_OFFLINE and not local
        hint = " (HF_DATASETS_OFFLINE is set: only the local cache is used)" if offline else ""
        raise Gpt2pipeError(f"{where}: cannot load split {split!r}{hint}: "
                            f"{type(e).__name__}: {_first_line(e)}") from None
    col = cfg.text_column
    if col not in ds.column_names:
        raise Gpt2pipeError(f"{where}: no column {col!r} in split {split!r} (columns: {ds.column_names}); "
                            "set data.text_column")
    feature = ds.features[col]
    if getattr(feature, "dtype", None) not in ("string", "large_string"):
        raise Gpt2pipeError(f"{where}: column {col!r} holds {feature}, not text; set data.text_column")
    return ds


def approx_bytes(ds) -> int | None:
    """Size of the dataset's Arrow data (sizes the document shuffle's buckets)."""
    try:
        return int(ds.data.nbytes)
    except Exception:  # an unusual backing table: the shuffle falls back to its default bucket count
        return None


def documents(ds, column: str) -> Iterator[str]:
    """The non-empty texts of one column, in dataset order, a batch of rows at a time."""
    for batch in ds.select_columns([column]).iter(batch_size=BATCH):
        yield from (t for t in batch[column] if t)
