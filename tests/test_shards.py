import numpy as np
import pytest

from gpt2pipe import Gpt2pipeError, config
from gpt2pipe.data.llmc_format import HEADER_BYTES, ShardSet, read_shard, write_shard
from gpt2pipe.data.tokenize import tokenize_to_shards
from gpt2pipe.data.tokenizer import EOT, encode_documents


def test_round_trip_and_llmc_header(tmp_path):
    toks = np.array([50256, 15496, 995, 0, 50256, 7], dtype=np.int64)
    write_shard(tmp_path / "s.bin", toks)
    raw = (tmp_path / "s.bin").read_bytes()
    assert len(raw) == HEADER_BYTES + 2 * len(toks)
    header = np.frombuffer(raw[:HEADER_BYTES], dtype="<i4")
    assert list(header[:3]) == [20240520, 1, 6] and not header[3:].any()
    assert read_shard(tmp_path / "s.bin").tolist() == toks.tolist()


def test_corrupt_shards_are_refused(tmp_path):
    write_shard(tmp_path / "s.bin", np.arange(100))
    raw = (tmp_path / "s.bin").read_bytes()
    (tmp_path / "trunc.bin").write_bytes(raw[:-10])
    with pytest.raises(Gpt2pipeError, match=r"trunc.bin: corrupt shard, header says 100 tokens \(1224 bytes\) but the file has 1214"):
        read_shard(tmp_path / "trunc.bin")
    (tmp_path / "short.bin").write_bytes(raw[:100])
    with pytest.raises(Gpt2pipeError, match="shorter than the 1024-byte header"):
        read_shard(tmp_path / "short.bin")
    (tmp_path / "magic.bin").write_bytes(np.int32(20240522).tobytes() + raw[4:])
    with pytest.raises(Gpt2pipeError, match="not an llm.c data shard"):
        read_shard(tmp_path / "magic.bin")
    write_shard(tmp_path / "vocab.bin", np.array([1, 2, 60000]))
    with pytest.raises(Gpt2pipeError, match="token 60000 at position 2 is outside the vocabulary"):
        read_shard(tmp_path / "vocab.bin")
    with pytest.raises(Gpt2pipeError, match="shard not found"):
        read_shard(tmp_path / "none.bin")


DOCS = [f"Document number {i}: " + "word " * (i % 37) for i in range(2000)]


def test_tokenize_val_first_and_documents_delimited(tmp_path):
    cfg = config.from_dict({"data": {"name": "t", "shard_tokens": 4096, "val_tokens": 1500, "workers": 1}}).data
    m = tokenize_to_shards(DOCS, cfg, tmp_path)
    assert m["val"] == ["t_val_000000.bin"] and m["train"][0] == "t_train_000001.bin"
    assert m["shard_tokens"][0] == 1500 and all(n == 4096 for n in m["shard_tokens"][1:-1])
    all_tokens = np.concatenate([read_shard(tmp_path / f) for f in m["val"] + m["train"]])
    expected = np.concatenate([np.array(d) for d in encode_documents(DOCS)])
    assert np.array_equal(all_tokens, expected)
    assert (all_tokens == EOT).sum() == len(DOCS) and all_tokens[0] == EOT
    s = ShardSet.open(tmp_path)
    assert [p.name for p in s.train] == m["train"]


def test_parallel_tokenization_is_deterministic(tmp_path):
    cfg1 = config.from_dict({"data": {"name": "t", "shard_tokens": 4096, "workers": 1}}).data
    cfg2 = config.from_dict({"data": {"name": "t", "shard_tokens": 4096, "workers": 2}}).data
    m1 = tokenize_to_shards(DOCS, cfg1, tmp_path / "a")
    m2 = tokenize_to_shards(DOCS, cfg2, tmp_path / "b")
    assert m1 == m2
    for f in m1["val"] + m1["train"]:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()


def test_max_tokens_and_too_small_corpus(tmp_path):
    cfg = config.from_dict({"data": {"name": "t", "shard_tokens": 2048, "max_tokens": 5000, "workers": 1}}).data
    assert tokenize_to_shards(DOCS, cfg, tmp_path / "a")["tokens"] == 5000
    cfg = config.from_dict({"data": {"name": "t", "shard_tokens": 100000, "workers": 1}}).data
    with pytest.raises(Gpt2pipeError, match="all in the val shard"):
        tokenize_to_shards(DOCS[:10], cfg, tmp_path / "b")
    with pytest.raises(Gpt2pipeError, match="c: shards folder not found"):
        ShardSet.open(tmp_path / "c")


def test_manifest_records_the_token_check_done_at_write_time(tmp_path):
    cfg = config.from_dict({"data": {"name": "t", "shard_tokens": 4096, "val_tokens": 1500, "workers": 1}}).data
    m = tokenize_to_shards(DOCS, cfg, tmp_path)
    tokens = np.concatenate([read_shard(tmp_path / f) for f in m["val"] + m["train"]])
    assert m["max_token"] == int(tokens.max()) == EOT
    assert ShardSet.open(tmp_path, vocab_size=50257).max_token == EOT
    with pytest.raises(Gpt2pipeError, match=r"the shards hold token id 50256, outside the model's vocabulary \(1000\)"):
        ShardSet.open(tmp_path, vocab_size=1000)


def test_llmc_folder_without_manifest_and_globs(tmp_path):
    d = tmp_path / "fineweb10B"
    for name in ("fineweb_val_000000.bin", "fineweb_train_000001.bin", "fineweb_train_000002.bin"):
        write_shard(d / name, np.arange(2000))
    (d / "notes.txt").write_text("not a shard")
    s = ShardSet.open(d)
    assert [p.name for p in s.val] == ["fineweb_val_000000.bin"] and s.max_token is None
    assert [p.name for p in s.train] == ["fineweb_train_000001.bin", "fineweb_train_000002.bin"]
    g = ShardSet.open(f"{d}/fineweb_*.bin")  # as llm.c's -i takes it
    assert (g.val, g.train) == (s.val, s.train)
    with pytest.raises(Gpt2pipeError, match=r"no validation shard \(\*_val_\*.bin\) among 2 shard\(s\)"):
        ShardSet.open(f"{d}/fineweb_train_*.bin")
    with pytest.raises(Gpt2pipeError, match=r"nothing_\*.bin: no llm.c training shards"):
        ShardSet.open(f"{d}/nothing_*.bin")
    (d / "fineweb_train_000002.bin").write_bytes(b"\0" * 2000)  # headers are checked on open
    with pytest.raises(Gpt2pipeError, match="fineweb_train_000002.bin: not an llm.c data shard"):
        ShardSet.open(d)


def test_a_failed_tokenize_leaves_no_shards(tmp_path):
    cfg = config.from_dict({"data": {"name": "t", "shard_tokens": 1024, "workers": 1}}).data
    tokenize_to_shards(DOCS, cfg, tmp_path)  # an earlier complete dataset

    def docs_then_failure():
        yield from DOCS[:500]  # several complete shards first
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        tokenize_to_shards(docs_then_failure(), cfg, tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither its shards nor the old manifest: nothing passes for a dataset


def test_missing_or_wrong_shards_folder_is_named_as_such(tmp_path):
    with pytest.raises(Gpt2pipeError, match=r"nowhere: shards folder not found"):
        ShardSet.open(tmp_path / "nowhere")
    (tmp_path / "file.bin").write_bytes(b"")
    with pytest.raises(Gpt2pipeError, match=r"file.bin: not a folder of shards"):
        ShardSet.open(tmp_path / "file.bin")
    (tmp_path / "empty").mkdir()
    with pytest.raises(Gpt2pipeError, match=r"empty: no llm.c training shards \(\*_train_\*.bin\) and no shards.json"):
        ShardSet.open(tmp_path / "empty")
    (tmp_path / "empty" / "shards.json").write_text("{not json")
    with pytest.raises(Gpt2pipeError, match=r"shards.json: not a shard manifest"):
        ShardSet.open(tmp_path / "empty")
