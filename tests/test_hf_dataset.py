"""data.source hf_dataset: a Hugging Face text dataset through `datasets`, offline, on data the test writes."""

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import shakespeare_docs

from gpt2pipe import Gpt2pipeError, config
from gpt2pipe.data.corpus import read_corpus, write_corpus
from gpt2pipe.data.llmc_format import ShardSet, read_shard
from gpt2pipe.data.tokenizer import encode_documents


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """In-process loads prepare into the test's folder, never the user's cache, and never go online."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets_cache")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)


def gpt2pipe(*args, env):
    return subprocess.run([sys.executable, "-m", "gpt2pipe", *args], capture_output=True, text=True, env=env)


def test_hf_dataset_end_to_end_offline_through_the_cli(tmp_path):
    parts = shakespeare_docs(2, 60)
    (tmp_path / "ds").mkdir()
    for i, docs in enumerate(parts):  # a dataset as jsonl files, with an extra column and an empty text
        rows = [{"text": t, "len": len(t)} for t in docs] + [{"text": "", "len": 0}]
        (tmp_path / "ds" / f"train-{i}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"results_dir": str(tmp_path / "results"),
           "data": {"name": "hf", "source": "hf_dataset", "hf_dataset": str(tmp_path / "ds"), "shuffle_documents": False,
                    "shard_tokens": 4096, "val_tokens": 1024, "workers": 1}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(sys.path)}
    for stage in ("corpus", "tokenize"):
        r = gpt2pipe(stage, "-c", str(tmp_path / "c.yaml"), env=env)
        assert r.returncode == 0, r.stderr[-2000:]
    data = tmp_path / "results" / "data" / "hf"
    shards = ShardSet.open(data / "shards")
    tokens = np.concatenate([read_shard(p) for p in shards.val + shards.train])
    expected = np.concatenate([np.array(d) for docs in parts for d in encode_documents(docs)])
    assert np.array_equal(tokens, expected)
    assert list((tmp_path / "hf_home" / "datasets").rglob("*.arrow"))  # prepared in the datasets cache of HF_HOME

    # a missing text column: one line, exit 2, and no corpus folder left behind
    r = gpt2pipe("corpus", "-c", str(tmp_path / "c.yaml"), "--set", "data.text_column=body",
                 "--set", "data.name=bad", env=env)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert "no column 'body' in split 'train' (columns: ['text', 'len']); set data.text_column" in r.stderr
    assert not (tmp_path / "results" / "data" / "bad").exists()


def hf_cfg(path, **data):
    return config.from_dict({"data": {"source": "hf_dataset", "hf_dataset": str(path), **data}}).data


def test_parquet_folder_save_to_disk_and_shuffle(tmp_path):
    import datasets

    docs = [f"story {i}" for i in range(50)]
    (tmp_path / "pq").mkdir()
    pq.write_table(pa.table({"story": docs[:30]}), tmp_path / "pq" / "train-00000.parquet")
    pq.write_table(pa.table({"story": docs[30:]}), tmp_path / "pq" / "train-00001.parquet")
    write_corpus(hf_cfg(tmp_path / "pq", text_column="story", shuffle_documents=False), tmp_path / "a")
    assert list(read_corpus(tmp_path / "a")) == docs
    write_corpus(hf_cfg(tmp_path / "pq", text_column="story"), tmp_path / "b")
    shuffled = list(read_corpus(tmp_path / "b"))
    assert sorted(shuffled) == sorted(docs) and shuffled != docs

    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": docs[:5]}),
                          "validation": datasets.Dataset.from_dict({"text": docs[5:7]})}).save_to_disk(tmp_path / "saved")
    write_corpus(hf_cfg(tmp_path / "saved", hf_split="validation", shuffle_documents=False), tmp_path / "c")
    assert list(read_corpus(tmp_path / "c")) == docs[5:7]
    assert list((tmp_path / "datasets_cache").rglob("*.arrow"))


def test_bad_hf_settings_are_one_line(tmp_path):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "train.jsonl").write_text('{"text": "x", "n": 1}\n')
    with pytest.raises(Gpt2pipeError, match="data.hf_dataset is not set"):
        write_corpus(config.from_dict({"data": {"source": "hf_dataset"}}).data, tmp_path / "o")
    with pytest.raises(Gpt2pipeError, match=r"column 'n' holds Value\('int64'\), not text"):
        write_corpus(hf_cfg(tmp_path / "ds", text_column="n"), tmp_path / "o")
    with pytest.raises(Gpt2pipeError, match=r"cannot load split 'test'.*Unknown split"):
        write_corpus(hf_cfg(tmp_path / "ds", hf_split="test"), tmp_path / "o")
    assert not (tmp_path / "o").exists()
