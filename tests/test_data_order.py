"""Issue 12's measured failure: a corpus stored in file order trains badly when read front to back.
Two very different halves (all-"a" documents, then all-"z" documents) must be mixed from the first batches."""

import numpy as np
import pytest

from gpt2pipe import config
from gpt2pipe.data.corpus import read_corpus, write_corpus
from gpt2pipe.data.llmc_format import ShardSet
from gpt2pipe.data.loader import ShardLoader
from gpt2pipe.data.tokenize import tokenize_to_shards
from gpt2pipe.data.tokenizer import gpt2


def halves_dataset(tmp_path, **data):
    docs = [" ".join(["a"] * (20 + i % 7)) for i in range(300)] + [" ".join(["z"] * (20 + i % 7)) for i in range(300)]
    (tmp_path / "halves.txt").write_text("\n\n".join(docs))
    cfg = config.from_dict({"data": {"name": "halves", "paths": [str(tmp_path / "halves.txt")], "shard_tokens": 2048,
                                     "val_tokens": 1024, "workers": 1, **data}}).data
    write_corpus(cfg, tmp_path / "corpus")
    tokenize_to_shards(read_corpus(tmp_path / "corpus"), cfg, tmp_path / "shards")
    return ShardSet.open(tmp_path / "shards")


def kinds(tokens: np.ndarray) -> set[str]:
    a, z = set(gpt2().encode_ordinary("a a")), set(gpt2().encode_ordinary("z z"))
    return {k for k, ids in (("a", a), ("z", z)) if np.isin(tokens, list(ids)).any()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_halves_are_mixed_from_the_first_batches(tmp_path, seed):
    shards = halves_dataset(tmp_path, seed=seed)
    assert kinds(np.concatenate([np.asarray(ShardLoader(shards.val, 4, 32).next_batch()[0])])) == {"a", "z"}
    loader = ShardLoader(shards.train, 4, 32, shuffle=True, seed=seed)
    for _ in range(3):
        assert kinds(loader.next_batch()[0].numpy()) == {"a", "z"}


def test_without_the_document_shuffle_batches_are_one_half(tmp_path):
    """The control: shard-level shuffling alone cannot mix a corpus whose shards are each one half."""
    shards = halves_dataset(tmp_path, shuffle_documents=False)
    assert kinds(ShardLoader(shards.val, 4, 32).next_batch()[0].numpy()) == {"a"}
    loader = ShardLoader(shards.train, 4, 32, shuffle=True, seed=0)
    assert all(len(kinds(loader.next_batch()[0].numpy())) == 1 for _ in range(3))
