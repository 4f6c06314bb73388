"""FineWeb (or any parquet dataset on the Hugging Face hub), one file at a time.

The hub is reached only through huggingface_hub, the one seam to the network:
- `HfApi` resolves the configured revision to a commit and lists the subset's parquet files with their
  sizes and sha256 (`list_files`); with HF_HUB_OFFLINE=1 the listing comes from the local hub cache.
- `hf_hub_download` fetches one file into the hub cache (resumable; honours HF_TOKEN, HF_HOME,
  HF_HUB_CACHE and HF_HUB_OFFLINE). The file is checked against the listing's size and sha256, then
  hard-linked (or copied) into the results folder (`download_file`).
So Snakemake can fetch and tokenize the files as independent jobs, each cached on its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from gpt2pipe import Gpt2pipeError
from gpt2pipe.files import atomic_path, write_json
from gpt2pipe.progress import tqdm

_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class HubFile:
    path: str  # path in the repository, e.g. sample/10BT/000_00000.parquet
    size: int
    sha256: str | None  # LFS files carry one; small git files do not

    @property
    def stem(self) -> str:
        return Path(self.path).stem


@dataclass(frozen=True)
class Listing:
    """The files of one subset at one commit: what every download is checked against."""

    repo: str
    subset: str
    revision: str  # as configured (a branch, tag or commit)
    commit: str  # what it resolved to when listed; downloads use this, so they all see one snapshot
    files: list[HubFile]

    def file(self, name: str) -> HubFile:
        """A file by its stem (000_00000) or full path."""
        for f in self.files:
            if name in (f.stem, f.path):
                return f
        raise Gpt2pipeError(f"{self.repo}@{self.commit[:12]}: no file {name!r} in subset {self.subset}")

    def save(self, path: str | Path) -> None:
        write_json(path, {**asdict(self), "files": [asdict(f) for f in self.files]})

    @classmethod
    def load(cls, path: str | Path) -> Listing:
        path = Path(path)
        if not path.is_file():
            raise Gpt2pipeError(f"{path}: no file listing (run `gpt2pipe fineweb list` first)")
        d = json.loads(path.read_text())
        return cls(**{**d, "files": [HubFile(**f) for f in d["files"]]})


def subset_folder(subset: str) -> str:
    """The repository folder of a subset: sample-10BT -> sample/10BT, CC-MAIN-2024-10 -> data/CC-MAIN-2024-10."""
    return subset.replace("sample-", "sample/", 1) if subset.startswith("sample-") else f"data/{subset}"


def _offline() -> bool:
    from huggingface_hub import constants

    return constants.is_offline_mode()


def list_files(repo: str, subset: str, revision: str, api=None) -> Listing:
    """The subset's parquet files, sorted, at the commit `revision` resolves to now.

    `api` is a huggingface_hub.HfApi, or a stand-in with its `dataset_info` and `list_repo_tree`.
    """
    folder = subset_folder(subset)
    if _offline() and api is None:
        commit, files = _list_cached(repo, folder, revision)
    else:
        if api is None:
            from huggingface_hub import HfApi

            api = HfApi()
        try:
            commit = api.dataset_info(repo, revision=revision).sha
            entries = list(api.list_repo_tree(repo, path_in_repo=folder, repo_type="dataset", revision=commit))
        except Exception as e:  # HTTP, auth, not found: one line, not a traceback
            raise Gpt2pipeError(f"{repo}@{revision}: cannot list {folder}/ on the hub: {_first_line(e)}") from None
        files = [HubFile(e.path, e.size, e.lfs.sha256 if getattr(e, "lfs", None) else None)
                 for e in entries if getattr(e, "size", None) is not None and e.path.endswith(".parquet")]
    if not files:
        raise Gpt2pipeError(f"{repo}@{revision}: no parquet files under {folder}/")
    return Listing(repo, subset, revision, commit, sorted(files, key=lambda f: f.path))


def _list_cached(repo: str, folder: str, revision: str) -> tuple[str, list[HubFile]]:
    """Offline listing from the hub cache: the snapshot of `revision`, whose LFS blobs are named by sha256."""
    from huggingface_hub import snapshot_download

    try:
        snap = Path(snapshot_download(repo, repo_type="dataset", revision=revision, local_files_only=True))
    except Exception as e:
        raise Gpt2pipeError(f"HF_HUB_OFFLINE is set and {repo}@{revision} is not in the hub cache: "
                            f"{_first_line(e)}") from None
    files = []
    for p in sorted((snap / folder).glob("*.parquet")):
        blob = Path(os.path.realpath(p)).name
        files.append(HubFile(f"{folder}/{p.name}", p.stat().st_size, blob if _SHA256.fullmatch(blob) else None))
    return snap.name, files


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def sha256_file(path: Path, progress: bool = True) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f, tqdm(total=path.stat().st_size, unit="B", unit_scale=True,
                                     desc=f"sha256 {path.name}", disable=not progress, dynamic_ncols=True) as bar:
        while chunk := f.read(1 << 24):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


def verify(path: Path, expected: HubFile, progress: bool = True) -> None:
    """Size, then sha256 (when the hub gave one); a mismatch names the file and both values."""
    size = path.stat().st_size
    if size != expected.size:
        raise Gpt2pipeError(f"{expected.path}: downloaded {size} bytes, the hub lists {expected.size}")
    if expected.sha256 and (got := sha256_file(path, progress)) != expected.sha256:
        raise Gpt2pipeError(f"{expected.path}: sha256 {got} does not match the hub's {expected.sha256}")


def download_file(listing: Listing, name: str, out: str | Path, download=None, progress: bool = True) -> Path:
    """Fetch one listed file through the hub cache, verify it, and link it to `out` (atomically)."""
    if download is None:
        from huggingface_hub import hf_hub_download as download
    f = listing.file(name)
    try:
        cached = Path(download(listing.repo, f.path, repo_type="dataset", revision=listing.commit))
    except Exception as e:
        hint = " (HF_HUB_OFFLINE is set and it is not in the hub cache)" if _offline() else ""
        raise Gpt2pipeError(f"{listing.repo}@{listing.commit[:12]}: cannot download {f.path}{hint}: "
                            f"{_first_line(e)}") from None
    blob = Path(os.path.realpath(cached))
    try:
        verify(blob, f, progress)
    except Gpt2pipeError as e:
        # a bad blob would be served again from the cache forever: drop it so a rerun downloads anew
        for p in (cached, blob):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        raise Gpt2pipeError(f"{e}; removed it from the hub cache, rerun to download again") from None
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.unlink()
        try:  # a hard link costs no space; across filesystems, copy
            os.link(blob, tmp)
        except OSError:
            shutil.copyfile(blob, tmp)
    return out
