import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import fineweb_parquet

from gpt2pipe import Gpt2pipeError, config
from gpt2pipe.data.corpus import read_corpus, write_corpus


def data_cfg(**data):
    return config.from_dict({"data": data}).data


def test_text_source_splits_documents(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("First Citizen:\nBefore we proceed\n\n\n\nAll:\nSpeak, speak.\n\n")
    files = write_corpus(data_cfg(paths=[str(src)], shuffle_documents=False), tmp_path / "out")
    assert [f.name for f in files] == ["docs_00000.parquet"]
    assert list(read_corpus(tmp_path / "out")) == ["First Citizen:\nBefore we proceed", "All:\nSpeak, speak."]
    assert pq.read_table(files[0]).column_names == ["id", "text"]


def test_parquet_source_reads_fineweb_schema(tmp_path):
    fineweb_parquet(tmp_path / "000_00000.parquet", ["one doc", "", "two doc"])
    write_corpus(data_cfg(source="parquet", paths=[str(tmp_path / "000_00000.parquet")], shuffle_documents=False),
                 tmp_path / "out")
    assert list(read_corpus(tmp_path / "out")) == ["one doc", "two doc"]


def test_bad_inputs_fail_with_the_file_named(tmp_path):
    with pytest.raises(Gpt2pipeError, match=r"data.paths: .*nope.txt: not found"):
        write_corpus(data_cfg(paths=[str(tmp_path / "nope.txt")]), tmp_path / "out")
    pq.write_table(pa.table({"content": ["x"]}), tmp_path / "wrong.parquet")
    with pytest.raises(Gpt2pipeError, match=r"wrong.parquet: parquet file has no 'text' column \(columns: \['content'\]; set data.text_column\)"):
        write_corpus(data_cfg(source="parquet", paths=[str(tmp_path / "wrong.parquet")]), tmp_path / "out")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(Gpt2pipeError, match="junk.parquet: not a readable parquet file"):
        write_corpus(data_cfg(source="parquet", paths=[str(tmp_path / "junk.parquet")]), tmp_path / "out")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(Gpt2pipeError, match="bin.txt: not UTF-8"):
        write_corpus(data_cfg(paths=[str(tmp_path / "bin.txt")]), tmp_path / "out")
    (tmp_path / "empty.txt").write_text("\n\n\n")
    with pytest.raises(Gpt2pipeError, match=r"empty.txt: holds no text \(empty, or only whitespace\)"):
        write_corpus(data_cfg(paths=[str(tmp_path / "empty.txt")]), tmp_path / "out")
    with pytest.raises(Gpt2pipeError, match="no docs_"):
        list(read_corpus(tmp_path / "nothing"))


def test_a_failed_corpus_leaves_no_folder(tmp_path):
    (tmp_path / "empty.txt").write_text("|||\n")  # text, but no document between the separators
    out = tmp_path / "results" / "data" / "x" / "corpus"
    with pytest.raises(Gpt2pipeError, match="no documents"):
        write_corpus(data_cfg(paths=[str(tmp_path / "empty.txt")], text_separator="|"), out)
    assert not (tmp_path / "results").exists()  # nor the parents it created
    (tmp_path / "late.txt").write_text("fine\n\nfine too\n\n")
    # fails after documents were written (the inputs check reads only up to bad.txt's first text)
    (tmp_path / "bad.txt").write_bytes(b"ok\n\n" * (1 << 18) + b"\xff\xfe")
    out.parent.mkdir(parents=True)
    with pytest.raises(Gpt2pipeError, match="bad.txt: not UTF-8"):
        write_corpus(data_cfg(paths=[str(tmp_path / "late.txt"), str(tmp_path / "bad.txt")]), out)
    assert list(out.parent.iterdir()) == []  # no partial folder, no temporary one
    write_corpus(data_cfg(paths=[str(tmp_path / "late.txt")]), out)
    assert sorted(read_corpus(out)) == ["fine", "fine too"]


def test_text_column_is_configurable(tmp_path):
    pq.write_table(pa.table({"content": ["x doc", "y doc"]}), tmp_path / "c.parquet")
    cfg = data_cfg(source="parquet", paths=[str(tmp_path / "c.parquet")], text_column="content", shuffle_documents=False)
    write_corpus(cfg, tmp_path / "out")
    assert list(read_corpus(tmp_path / "out")) == ["x doc", "y doc"]
