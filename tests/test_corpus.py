import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpt2pipe import Gpt2pipeError, config
from gpt2pipe.corpus import download_fineweb, fineweb_files, read_corpus, write_corpus


def data_cfg(**data):
    return config.from_dict({"data": data}).data


def fineweb_parquet(path, texts):
    """A parquet file with FineWeb's columns."""
    n = len(texts)
    pq.write_table(pa.table({
        "text": texts, "id": [f"<urn:uuid:{i}>" for i in range(n)], "dump": ["CC-MAIN-2024-10"] * n,
        "url": [f"https://example.org/{i}" for i in range(n)], "date": ["2024-02-20"] * n,
        "file_path": ["s3://x"] * n, "language": ["en"] * n, "language_score": [0.9] * n, "token_count": [3] * n,
    }), path)


def test_text_source_splits_documents(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("First Citizen:\nBefore we proceed\n\n\n\nAll:\nSpeak, speak.\n\n")
    files = write_corpus(data_cfg(paths=[str(src)]), tmp_path / "out")
    assert [f.name for f in files] == ["docs_00000.parquet"]
    assert list(read_corpus(tmp_path / "out")) == ["First Citizen:\nBefore we proceed", "All:\nSpeak, speak."]
    assert pq.read_table(files[0]).column_names == ["id", "text"]


def test_parquet_source_reads_fineweb_schema(tmp_path):
    fineweb_parquet(tmp_path / "000_00000.parquet", ["one doc", "", "two doc"])
    write_corpus(data_cfg(source="parquet", paths=[str(tmp_path / "000_00000.parquet")]), tmp_path / "out")
    assert list(read_corpus(tmp_path / "out")) == ["one doc", "two doc"]


def test_bad_inputs_fail_with_the_file_named(tmp_path):
    with pytest.raises(Gpt2pipeError, match=r"nope.txt: corpus file not found"):
        write_corpus(data_cfg(paths=[str(tmp_path / "nope.txt")]), tmp_path / "out")
    pq.write_table(pa.table({"content": ["x"]}), tmp_path / "wrong.parquet")
    with pytest.raises(Gpt2pipeError, match="wrong.parquet: parquet file has no 'text' column"):
        write_corpus(data_cfg(source="parquet", paths=[str(tmp_path / "wrong.parquet")]), tmp_path / "out")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(Gpt2pipeError, match="junk.parquet: not a readable parquet file"):
        write_corpus(data_cfg(source="parquet", paths=[str(tmp_path / "junk.parquet")]), tmp_path / "out")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(Gpt2pipeError, match="bin.txt: not UTF-8"):
        write_corpus(data_cfg(paths=[str(tmp_path / "bin.txt")]), tmp_path / "out")
    (tmp_path / "empty.txt").write_text("\n\n\n")
    with pytest.raises(Gpt2pipeError, match="no documents"):
        write_corpus(data_cfg(paths=[str(tmp_path / "empty.txt")]), tmp_path / "out")
    with pytest.raises(Gpt2pipeError, match="no docs_"):
        list(read_corpus(tmp_path / "nothing"))


class FakeHub:
    """Stands in for huggingface_hub up to the network call: lists files, 'downloads' local copies."""

    def __init__(self, root):
        self.root = root
        self.calls = []

    def list_repo_files(self, repo, repo_type, revision):
        self.calls.append(("list", repo, repo_type, revision))
        return ["README.md", "sample/10BT/001_00000.parquet", "sample/10BT/000_00000.parquet",
                "sample/100BT/000_00000.parquet", "data/CC-MAIN-2024-10/000_00000.parquet"]

    def download(self, repo, name, repo_type, revision, local_dir):
        self.calls.append(("get", name, revision))
        dest = local_dir / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        fineweb_parquet(dest, [f"doc from {name}"])
        return str(dest)


def test_fineweb_subset_selection_and_download(tmp_path):
    hub = FakeHub(tmp_path)
    assert fineweb_files("HuggingFaceFW/fineweb", "sample-10BT", "abc123", api=hub) == [
        "sample/10BT/000_00000.parquet", "sample/10BT/001_00000.parquet"]
    assert fineweb_files("x", "CC-MAIN-2024-10", "main", api=hub) == ["data/CC-MAIN-2024-10/000_00000.parquet"]
    with pytest.raises(Gpt2pipeError, match="no parquet files under sample/1BT/"):
        fineweb_files("x", "sample-1BT", "main", api=hub)
    cfg = data_cfg(source="fineweb", hf_revision="abc123")
    paths = download_fineweb(cfg, tmp_path, api=hub, download=hub.download)
    assert [p.name for p in paths] == ["000_00000.parquet", "001_00000.parquet"]
    assert ("get", "sample/10BT/000_00000.parquet", "abc123") in hub.calls
