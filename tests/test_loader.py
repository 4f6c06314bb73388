import numpy as np
import pytest

from gpt2pipe import Gpt2pipeError
from gpt2pipe.data.loader import ShardLoader
from gpt2pipe.data.llmc_format import write_shard


@pytest.fixture
def two_shards(tmp_path):
    write_shard(tmp_path / "a.bin", np.arange(0, 100))
    write_shard(tmp_path / "b.bin", np.arange(1000, 1050))
    return [tmp_path / "a.bin", tmp_path / "b.bin"]


def test_batches_are_consecutive_and_shifted(two_shards):
    loader = ShardLoader(two_shards, batch_size=2, seq_len=8)
    x, y = loader.next_batch()
    assert x.tolist() == [list(range(0, 8)), list(range(8, 16))]
    assert y.tolist() == [list(range(1, 9)), list(range(9, 17))]
    x2, _ = loader.next_batch()
    assert x2[0, 0].item() == 16


def test_ranks_take_interleaved_slices(two_shards):
    r0 = ShardLoader(two_shards, 1, 8, rank=0, world_size=2)
    r1 = ShardLoader(two_shards, 1, 8, rank=1, world_size=2)
    single = ShardLoader(two_shards, 2, 8)
    for _ in range(5):
        x0, _ = r0.next_batch()
        x1, _ = r1.next_batch()
        xs, _ = single.next_batch()
        assert xs.tolist() == [x0[0].tolist(), x1[0].tolist()]


def test_moves_to_next_shard_and_wraps(two_shards):
    loader = ShardLoader(two_shards, 2, 16)  # 33 tokens per batch: 3 from shard a, 1 from b
    firsts = [loader.next_batch()[0][0, 0].item() for _ in range(6)]
    assert firsts == [0, 32, 64, 1000, 0, 32]


def test_state_round_trip_resumes_exactly(two_shards):
    a = ShardLoader(two_shards, 2, 16)
    for _ in range(3):
        a.next_batch()
    b = ShardLoader(two_shards, 2, 16)
    b.load_state_dict(a.state_dict())
    for _ in range(4):
        assert a.next_batch()[0].tolist() == b.next_batch()[0].tolist()


def test_shards_smaller_than_a_batch(two_shards):
    with pytest.raises(Gpt2pipeError, match=r"the largest shard holds 100 tokens, fewer than one sample of 8x64\+1 = 513 tokens needs"):
        ShardLoader(two_shards, 8, 64)
