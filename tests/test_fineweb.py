"""FineWeb file by file: hub listing, verified downloads (real huggingface_hub, offline, against a local
hub cache the test lays out), streaming per-file tokenization and sharding."""

import os
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import fineweb_parquet, hub_cache, shakespeare_docs
from huggingface_hub import constants
from huggingface_hub.hf_api import RepoFile, RepoFolder

from gpt2pipe import Gpt2pipeError, config
from gpt2pipe.data.fineweb import Listing, download_file, list_files
from gpt2pipe.data.llmc_format import read_shard
from gpt2pipe.data.tokenize import encode_parquet, shards_from_token_files, tokenize_to_shards
from gpt2pipe.data.tokenizer import encode_documents

REPO = "HuggingFaceFW/fineweb"


class StandInApi:
    """huggingface_hub.HfApi up to the network call: the same methods, answering with real RepoFile objects."""

    def __init__(self, fail=None):
        self.calls, self.fail = [], fail

    def dataset_info(self, repo, revision):
        self.calls.append(("info", repo, revision))
        if self.fail:
            raise self.fail
        return SimpleNamespace(sha="a" * 40)

    def list_repo_tree(self, repo, path_in_repo, repo_type, revision):
        self.calls.append(("tree", path_in_repo, repo_type, revision))
        lfs = lambda n: {"size": n, "oid": f"{n:064x}", "pointerSize": 134}  # noqa: E731
        entries = {
            "sample/10BT": [RepoFile(path="sample/10BT/001_00000.parquet", size=20, oid="x", lfs=lfs(20)),
                            RepoFile(path="sample/10BT/000_00000.parquet", size=10, oid="y", lfs=lfs(10)),
                            RepoFile(path="sample/10BT/README.md", size=5, oid="z"),
                            RepoFolder(path="sample/10BT/extra", oid="w")],
            "data/CC-MAIN-2024-10": [RepoFile(path="data/CC-MAIN-2024-10/000_00000.parquet", size=7, oid="v")],
        }
        return iter(entries.get(path_in_repo, []))


def test_listing_pins_the_commit_and_keeps_sizes_and_hashes():
    api = StandInApi()
    listing = list_files(REPO, "sample-10BT", "main", api=api)
    assert api.calls == [("info", REPO, "main"), ("tree", "sample/10BT", "dataset", "a" * 40)]
    assert listing.commit == "a" * 40 and listing.revision == "main"
    assert [(f.path, f.size, f.sha256) for f in listing.files] == [
        ("sample/10BT/000_00000.parquet", 10, f"{10:064x}"), ("sample/10BT/001_00000.parquet", 20, f"{20:064x}")]
    assert listing.file("001_00000").size == 20 and listing.file("sample/10BT/000_00000.parquet").size == 10
    cc = list_files(REPO, "CC-MAIN-2024-10", "v1", api=api)
    assert [(f.path, f.sha256) for f in cc.files] == [("data/CC-MAIN-2024-10/000_00000.parquet", None)]
    with pytest.raises(Gpt2pipeError, match="no parquet files under sample/1BT/"):
        list_files(REPO, "sample-1BT", "main", api=api)
    with pytest.raises(Gpt2pipeError, match=r"HuggingFaceFW/fineweb@main: cannot list sample/10BT/ on the hub: 401 Unauth"):
        list_files(REPO, "sample-10BT", "main", api=StandInApi(fail=RuntimeError("401 Unauthorized\ndetails")))


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """A hub cache with two FineWeb files, served by the real huggingface_hub in offline mode."""
    src = [fineweb_parquet(tmp_path / "src" / f"{i:03d}_00000.parquet", docs)
           for i, docs in enumerate(shakespeare_docs(2, 150))]
    cache = tmp_path / "hub"
    commit = hub_cache(cache, REPO, {f"sample/10BT/{p.name}": p for p in src})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return SimpleNamespace(src=src, cache=cache, commit=commit)


def test_offline_listing_and_verified_download_through_the_hub_cache(tmp_path, offline_hub):
    listing = list_files(REPO, "sample-10BT", "main", api=None)
    assert listing.commit == offline_hub.commit
    assert [f.stem for f in listing.files] == ["000_00000", "001_00000"]
    listing.save(tmp_path / "files.json")
    assert Listing.load(tmp_path / "files.json") == listing

    out = download_file(listing, "001_00000", tmp_path / "raw" / "001_00000.parquet", progress=False)
    assert out.read_bytes() == offline_hub.src[1].read_bytes()
    blob = offline_hub.cache / f"datasets--{REPO.replace('/', '--')}" / "blobs" / listing.files[1].sha256
    assert os.stat(out).st_ino == os.stat(blob).st_ino  # linked, not copied

    # a corrupted cache blob of the right size is caught by its hash and dropped, so a rerun refetches it
    blob0 = blob.with_name(listing.files[0].sha256)
    data = bytearray(blob0.read_bytes())
    data[100] ^= 1
    blob0.write_bytes(bytes(data))
    with pytest.raises(Gpt2pipeError, match=r"000_00000.parquet: sha256 \w+ does not match the hub's .*removed it"):
        download_file(listing, "000_00000", tmp_path / "raw" / "000_00000.parquet", progress=False)
    assert not blob0.exists() and not (tmp_path / "raw" / "000_00000.parquet").exists()
    with pytest.raises(Gpt2pipeError, match="HF_HUB_OFFLINE is set and it is not in the hub cache"):
        download_file(listing, "000_00000", tmp_path / "raw" / "000_00000.parquet", progress=False)
    with pytest.raises(Gpt2pipeError, match="no file '002_00000'"):
        download_file(listing, "002_00000", tmp_path / "x.parquet")
    with pytest.raises(Gpt2pipeError, match="HF_HUB_OFFLINE is set and HuggingFaceFW/fineweb-edu@main is not in the hub cache"):
        list_files("HuggingFaceFW/fineweb-edu", "sample-10BT", "main")


def test_download_asks_for_the_listed_commit_and_checks_the_size(tmp_path, offline_hub):
    listing = list_files(REPO, "sample-10BT", "main")
    calls = []

    def fetch(repo, filename, repo_type, revision):  # the seam: hf_hub_download's signature
        calls.append((repo, filename, repo_type, revision))
        return str(offline_hub.src[0])

    download_file(listing, "000_00000", tmp_path / "a.parquet", download=fetch, progress=False)
    assert calls == [(REPO, "sample/10BT/000_00000.parquet", "dataset", offline_hub.commit)]
    with pytest.raises(Gpt2pipeError, match=r"001_00000.parquet: downloaded \d+ bytes, the hub lists \d+"):
        download_file(listing, "001_00000", tmp_path / "b.parquet", download=fetch, progress=False)


def data_cfg(**kw):
    return config.from_dict({"data": {"name": "fw", "shard_tokens": 4096, "val_tokens": 2048, **kw}}).data


def test_encode_streams_row_groups_in_order_with_any_worker_count(tmp_path):
    docs = shakespeare_docs(1, 400)[0]
    src = fineweb_parquet(tmp_path / "f.parquet", docs, row_group_size=37)
    n1 = encode_parquet(src, tmp_path / "w1.bin", workers=1, progress=False)
    n2 = encode_parquet(src, tmp_path / "w2.bin", workers=2, progress=False)
    expected = np.concatenate([np.array(d, dtype=np.uint16) for d in encode_documents(docs)])
    assert n1 == n2 == len(expected)
    assert (tmp_path / "w1.bin").read_bytes() == (tmp_path / "w2.bin").read_bytes()
    assert np.array_equal(read_shard(tmp_path / "w1.bin"), expected)
    assert encode_parquet(src, tmp_path / "cap.bin", workers=1, max_tokens=1000, progress=False) == 1000
    assert np.array_equal(read_shard(tmp_path / "cap.bin"), expected[:1000])


def test_sharding_token_files_equals_tokenizing_the_whole_corpus(tmp_path):
    parts = shakespeare_docs(3, 120)
    tokens = []
    for i, docs in enumerate(parts):
        src = fineweb_parquet(tmp_path / f"{i}.parquet", docs)
        encode_parquet(src, tmp_path / f"{i}.bin", workers=1, progress=False)
        tokens.append(tmp_path / f"{i}.bin")
    all_docs = [d for docs in parts for d in docs]
    for cap in (None, 12000):
        cfg = data_cfg(workers=1, max_tokens=cap)
        m = shards_from_token_files(tokens, cfg, tmp_path / f"from_files_{cap}", progress=False)
        direct = tokenize_to_shards(all_docs, cfg, tmp_path / f"direct_{cap}")
        assert m == direct and m["val"] == ["fw_val_000000.bin"] and len(m["train"]) >= 2
        for name in m["val"] + m["train"]:
            assert (tmp_path / f"from_files_{cap}" / name).read_bytes() == (tmp_path / f"direct_{cap}" / name).read_bytes()
    assert m["tokens"] == 12000

    # a truncated token file is refused before any shard is written
    raw = tokens[1].read_bytes()
    tokens[1].write_bytes(raw[:-2])
    with pytest.raises(Gpt2pipeError, match=r"1.bin: corrupt shard"):
        shards_from_token_files(tokens, data_cfg(), tmp_path / "bad", progress=False)
    assert not list((tmp_path / "bad").glob("*.bin"))
