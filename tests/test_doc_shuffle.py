"""data.shuffle_documents: the corpus stage writes the documents in a seeded random order."""

import pyarrow.parquet as pq
import pytest

from gpt2pipe import config
from gpt2pipe.data import doc_shuffle
from gpt2pipe.data.corpus import read_corpus, write_corpus

DOCS = [f"document {i}" + " word" * (i % 13) for i in range(3000)]


def corpus(tmp_path, name, **data):
    src = tmp_path / "in.txt"
    src.write_text("\n\n".join(DOCS))
    cfg = config.from_dict({"data": {"paths": [str(src)], **data}}).data
    write_corpus(cfg, tmp_path / name)
    ids = [i for f in sorted((tmp_path / name).glob("docs_*.parquet")) for i in pq.read_table(f)["id"].to_pylist()]
    return list(read_corpus(tmp_path / name)), ids


def test_shuffle_is_seeded_deterministic_and_a_permutation(tmp_path):
    a, ids = corpus(tmp_path, "a")
    assert sorted(a) == sorted(DOCS) and a != DOCS  # on by default
    assert [DOCS[int(i.split("/")[1])] for i in ids] == a  # ids keep each document's place in the source
    assert corpus(tmp_path, "b")[0] == a  # same seed, same order
    c = corpus(tmp_path, "c", seed=7)[0]
    assert sorted(c) == sorted(DOCS) and c != a  # another seed, another order
    assert corpus(tmp_path, "d", shuffle_documents=False)[0] == DOCS
    # mixed: the first tenth holds documents from every tenth of the source
    tenth = len(DOCS) // 10
    assert {int(i.split("/")[1]) // tenth for i in ids[:tenth]} == set(range(10))


def test_order_does_not_depend_on_buckets_or_memory(tmp_path, monkeypatch):
    expected = corpus(tmp_path, "a", seed=3)[0]
    monkeypatch.setattr(doc_shuffle, "BUCKET_BYTES", 4096)  # ~16 buckets for this corpus
    monkeypatch.setattr(doc_shuffle, "FLUSH_BYTES", 1000)  # many small row groups per bucket
    monkeypatch.setattr(doc_shuffle, "READ_DOCS", 7)
    assert doc_shuffle.bucket_bits((tmp_path / "in.txt").stat().st_size) >= 4
    assert corpus(tmp_path, "b", seed=3)[0] == expected
    assert not list(tmp_path.glob("b/.shuffle*")) and not list(tmp_path.glob(".b.*"))


@pytest.mark.parametrize("approx, bits", [(None, 6), (0, 0), (128 << 20, 0), ((128 << 20) + 1, 1), (1 << 50, 12)])
def test_bucket_count(approx, bits):
    assert doc_shuffle.bucket_bits(approx) == bits
