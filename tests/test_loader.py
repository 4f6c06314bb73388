import json

import numpy as np
import pytest

from gpt2pipe import Gpt2pipeError
from gpt2pipe.data.llmc_format import write_shard
from gpt2pipe.data.loader import ShardLoader


@pytest.fixture
def two_shards(tmp_path):
    write_shard(tmp_path / "a.bin", np.arange(0, 100))
    write_shard(tmp_path / "b.bin", np.arange(1000, 1050))
    return [tmp_path / "a.bin", tmp_path / "b.bin"]


def shards_of(tmp_path, sizes):
    """Shards of distinct tokens (shard i holds 1000*i + position), so every token names where it came from."""
    paths = []
    for i, n in enumerate(sizes):
        write_shard(tmp_path / f"s_train_{i:06d}.bin", 1000 * (i + 1) + np.arange(n))
        paths.append(tmp_path / f"s_train_{i:06d}.bin")
    return paths


def starts(loader, n):
    return [loader.next_batch()[0][0, 0].item() for _ in range(n)]


# --- validation order: unshuffled, as before ---------------------------------------------------------

def test_batches_are_consecutive_and_shifted(two_shards):
    loader = ShardLoader(two_shards, batch_size=2, seq_len=8)
    x, y = loader.next_batch()
    assert x.tolist() == [list(range(0, 8)), list(range(8, 16))]
    assert y.tolist() == [list(range(1, 9)), list(range(9, 17))]
    x2, _ = loader.next_batch()
    assert x2[0, 0].item() == 16


def test_unshuffled_ranks_take_interleaved_slices(two_shards):
    r0 = ShardLoader(two_shards, 1, 8, rank=0, world_size=2)
    r1 = ShardLoader(two_shards, 1, 8, rank=1, world_size=2)
    single = ShardLoader(two_shards, 2, 8)
    for _ in range(5):
        x0, _ = r0.next_batch()
        x1, _ = r1.next_batch()
        xs, _ = single.next_batch()
        assert xs.tolist() == [x0[0].tolist(), x1[0].tolist()]


def test_unshuffled_moves_to_next_shard_wraps_and_reset_restarts(two_shards):
    loader = ShardLoader(two_shards, 2, 16)  # 33 tokens per sample: 3 from shard a, 1 from b
    assert starts(loader, 6) == [0, 32, 64, 1000, 0, 32]
    loader.reset()
    assert starts(loader, 2) == [0, 32] and loader.epoch == 0


# --- training order: shuffled, the same for any process count ----------------------------------------

def test_shuffled_epochs_visit_every_window_once_in_a_new_order(tmp_path):
    shards = shards_of(tmp_path, [100, 50, 77])  # 12 + 6 + 9 = 27 windows of 8+1 tokens
    loader = ShardLoader(shards, 1, 8, shuffle=True, seed=5)
    epochs = [starts(loader, 27) for _ in range(3)]
    every = sorted(1000 * (i + 1) + 8 * w for i, n in enumerate([12, 6, 9]) for w in range(n))
    for e in epochs:
        assert sorted(e) == every  # a permutation of all windows
        assert e != sorted(e)  # not the file order
    assert epochs[0] != epochs[1] != epochs[2]  # a fresh permutation every epoch
    other_seed = ShardLoader(shards, 1, 8, shuffle=True, seed=6)
    assert starts(other_seed, 27) != epochs[0]
    same_seed = ShardLoader(shards, 1, 8, shuffle=True, seed=5)
    assert starts(same_seed, 27) == epochs[0]


def test_one_process_with_accumulation_equals_two_processes_every_step(tmp_path):
    # 27 windows per epoch: odd, so epoch boundaries fall inside an optimizer step of two samples
    shards = shards_of(tmp_path, [100, 50, 77])
    single = ShardLoader(shards, 1, 8, shuffle=True, seed=3)
    ranks = [ShardLoader(shards, 1, 8, r, 2, shuffle=True, seed=3) for r in range(2)]
    seen_shards = set()
    for _ in range(70):  # 140 samples: > 5 epochs, crossing every shard boundary
        accumulated = [single.next_batch() for _ in range(2)]
        parallel = [r.next_batch() for r in ranks]
        for (xs, ys), (xp, yp) in zip(accumulated, parallel):
            assert xs.tolist() == xp.tolist() and ys.tolist() == yp.tolist()
            seen_shards.add(xs[0, 0].item() // 1000)
        assert single.state_dict() == ranks[0].state_dict() == ranks[1].state_dict()
    assert single.epoch == 5 and seen_shards == {1, 2, 3}


@pytest.mark.parametrize("steps", [5, 14, 16])  # mid-epoch; at the epoch boundary (28 samples); just after
def test_resume_is_exact_across_process_counts(tmp_path, steps):
    shards = shards_of(tmp_path, [100, 50, 85])  # 12 + 6 + 10 = 28 windows per epoch
    run = [ShardLoader(shards, 1, 8, r, 2, shuffle=True, seed=1) for r in range(2)]
    for _ in range(steps):
        for r in run:
            r.next_batch()
    state = json.loads(json.dumps(run[0].state_dict()))  # JSON through and through
    assert state == run[1].state_dict()
    expected = [[b.tolist() for r in run for b in r.next_batch()] for _ in range(20)]
    one = ShardLoader(shards, 1, 8, shuffle=True, seed=1)
    one.load_state_dict(state)
    got = []
    for _ in range(20):
        (x0, y0), (x1, y1) = one.next_batch(), one.next_batch()
        got.append([x0.tolist(), y0.tolist(), x1.tolist(), y1.tolist()])
    assert got == expected
    # and back: a state saved by one process resumes on two
    again = [ShardLoader(shards, 1, 8, r, 2, shuffle=True, seed=1) for r in range(2)]
    for r in again:
        r.load_state_dict(one.state_dict())
    after = ShardLoader(shards, 1, 8, shuffle=True, seed=1)
    after.load_state_dict(one.state_dict())
    for _ in range(10):
        assert [b.tolist() for r in again for b in r.next_batch()] == \
            [b.tolist() for b in after.next_batch() + after.next_batch()]


def test_epoch_rollover_is_logged(tmp_path):
    lines = []
    loader = ShardLoader(shards_of(tmp_path, [100, 50]), 1, 8, shuffle=True, seed=0, log=lines.append)
    starts(loader, 18)
    assert lines == [] and loader.epoch == 0
    starts(loader, 1)
    assert loader.epoch == 1
    assert lines == ["data: epoch 1 begins (18 samples of 1x8 tokens per epoch, reshuffled)"]


def test_state_for_other_shards_or_settings_is_refused(tmp_path):
    shards = shards_of(tmp_path, [100, 50])
    state = ShardLoader(shards, 1, 8, shuffle=True, seed=1).state_dict()
    for other, what in [(ShardLoader(shards, 1, 8, shuffle=True, seed=2), "seed"),
                        (ShardLoader(shards, 2, 8, shuffle=True, seed=1), "batch_size"),
                        (ShardLoader(shards, 1, 8, shuffle=False, seed=1), "shuffle"),
                        (ShardLoader(shards[:1], 1, 8, shuffle=True, seed=1), "shards")]:
        with pytest.raises(Gpt2pipeError, match=f"belongs to other {what} "):
            other.load_state_dict(state)
    with pytest.raises(Gpt2pipeError, match="from an older gpt2pipe"):
        ShardLoader(shards, 1, 8).load_state_dict({"shard": 0, "position": 16, "shards": ["a.bin"]})


# --- bad shards fail before training -----------------------------------------------------------------

def test_shards_smaller_than_a_sample(two_shards):
    with pytest.raises(Gpt2pipeError, match=r"the largest shard holds 100 tokens, fewer than one sample of 8x64\+1 = 513 tokens needs"):
        ShardLoader(two_shards, 8, 64)


def test_corrupt_or_truncated_shard_fails_at_construction(two_shards):
    raw = two_shards[1].read_bytes()
    two_shards[1].write_bytes(raw[:-7])
    with pytest.raises(Gpt2pipeError, match=r"b.bin: corrupt shard, header says 50 tokens"):
        ShardLoader(two_shards, 1, 8)
    two_shards[1].write_bytes(np.int32(7).tobytes() + raw[4:])
    with pytest.raises(Gpt2pipeError, match=r"b.bin: not an llm.c data shard \(magic 7"):
        ShardLoader(two_shards, 1, 8)


def test_token_outside_the_vocabulary_names_shard_and_position(tmp_path):
    toks = np.arange(100)
    toks[42] = 50300
    write_shard(tmp_path / "bad.bin", toks)
    loader = ShardLoader([tmp_path / "bad.bin"], 1, 8, vocab_size=50257)  # opening reads no token
    starts(loader, 5)
    with pytest.raises(Gpt2pipeError, match=r"bad.bin: token 50300 at position 42 is outside the vocabulary \(50257\)"):
        loader.next_batch()


def test_shuffle_is_llmc_draw_for_draw():
    """llm.c's Mersenne Twister (llmc/rand.h documents seed 137's first outputs, equal to torch's) and its
    Fisher-Yates: the same generator and the same swaps give llm.c's batches on one process."""
    import numpy as np

    from gpt2pipe.data.loader import LlmcShuffle, llmc_permutation

    rng = np.random.RandomState(137)
    assert rng.randint(0, 2**32, size=5, dtype=np.uint32).tolist() == \
        [4053805790, 2173880614, 380293709, 1237255315, 2986595568]
    # random_permutation(data, 4) draws 3 numbers: j = r % 4, then r % 3, then r % 2
    r = np.random.RandomState(137).randint(0, 2**32, size=3, dtype=np.uint32).tolist()
    expect = [0, 1, 2, 3]
    for k, i in enumerate((3, 2, 1)):
        j = r[k] % (i + 1)
        expect[i], expect[j] = expect[j], expect[i]
    assert llmc_permutation(np.arange(4), np.random.RandomState(137)).tolist() == expect
    # an epoch: the shard order (permuted in place, epoch after epoch), then each visited shard's windows
    windows = np.array([3, 5, 2])
    rng = np.random.RandomState(42)
    order0 = llmc_permutation(np.arange(3), rng)
    perms0 = [llmc_permutation(np.arange(windows[s]), rng) for s in order0]
    order1 = llmc_permutation(order0.copy(), rng)
    shuffle = LlmcShuffle(42, windows)
    got1, _ = shuffle.epoch(1)  # reached by replaying epoch 0
    got0, p0 = shuffle.epoch(0)
    assert got0.tolist() == order0.tolist() and [p.tolist() for p in p0] == [p.tolist() for p in perms0]
    assert got1.tolist() == order1.tolist()


# --- document-aligned rows (train.document_aligned) ----------------------------------------------------

EOT = 50256


def document_shards(tmp_path, n_shards=3, docs=60, seed=0):
    """Shards of documents as our tokenizer writes them (<|endoftext|>, then the text), of 1 to 40 tokens
    each, every token naming its shard and document: 1000 * shard + document (modulo the vocabulary)."""
    rng = np.random.default_rng(seed)
    paths = []
    for s in range(n_shards):
        toks = []
        if s == 1:
            toks += [7] * 5  # a shard that starts inside a document (as FineWeb's 100M-token cuts do)
        for d in range(docs):
            toks += [EOT] + [1000 * (s + 1) + d] * int(rng.integers(1, 40))
        write_shard(tmp_path / f"d_train_{s:06d}.bin", np.array(toks))
        paths.append(tmp_path / f"d_train_{s:06d}.bin")
    return paths


def test_document_aligned_rows_start_at_documents_and_are_cut_greedily(tmp_path):
    from gpt2pipe.data.llmc_format import read_shard
    from gpt2pipe.data.loader import aligned_rows

    shards = document_shards(tmp_path)
    T = 16
    for path in shards:  # the rule itself, on each shard
        toks = np.asarray(read_shard(path))
        rows = aligned_rows(toks, T)
        docs = np.flatnonzero(toks == EOT)
        assert rows[0] == docs[0] and all(toks[rows] == EOT)
        for a, b in zip(rows, rows[1:]):  # the next row: the first document starting at or after a + T
            assert b == docs[np.searchsorted(docs, a + T)]
        assert rows[-1] + T + 1 <= len(toks)  # whole rows only
        later = docs[docs >= rows[-1] + T]
        assert not len(later) or later[0] + T + 1 > len(toks)  # the dropped one did not fit
    loader = ShardLoader(shards, 2, T, shuffle=True, seed=1, document_aligned=True, log=(said := []).append)
    assert said[0].startswith(f"data: document-aligned rows: {loader.per_epoch:,} samples of 2x16 tokens per epoch")
    seen = []
    for _ in range(loader.per_epoch):
        x, y = loader.next_batch()
        assert x.shape == y.shape == (2, T)
        assert (x[:, 0] == EOT).all()  # every row starts a document
        assert torch_equal_shift(x, y, loader, seen)
    every = sorted((s, int(r)) for s in range(3) for r in loader.rows[s][: 2 * loader.windows[s]])
    assert sorted(seen) == every  # one epoch: each row of each shard once


def torch_equal_shift(x, y, loader, seen):
    """y is x shifted by one token inside each row, and the row is the shard's tokens at its start."""
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        hits = [(s, int(r)) for s, rows in enumerate(loader.rows) for r in rows
                if loader.tokens[s][r : r + loader.T].tolist() == row_x
                and loader.tokens[s][r + 1 : r + loader.T + 1].tolist() == row_y]
        if not hits:
            return False
        seen.append(hits[0])
    return True


def test_document_aligned_two_processes_equal_one_and_resume_exactly(tmp_path):
    shards = document_shards(tmp_path)
    kw = dict(shuffle=True, seed=3, document_aligned=True)
    single = ShardLoader(shards, 2, 16, **kw)
    ranks = [ShardLoader(shards, 2, 16, r, 2, **kw) for r in range(2)]
    for _ in range(single.per_epoch + 3):  # more than an epoch of 2-sample steps
        accumulated = [b.tolist() for _ in range(2) for b in single.next_batch()]
        parallel = [b.tolist() for r in ranks for b in r.next_batch()]
        assert accumulated == parallel
    state = json.loads(json.dumps(ranks[0].state_dict()))
    assert state == single.state_dict() and state["document_aligned"] is True and single.epoch >= 1
    expected = [[b.tolist() for b in single.next_batch()] for _ in range(30)]
    resumed = ShardLoader(shards, 2, 16, **kw)
    resumed.load_state_dict(state)
    assert [[b.tolist() for b in resumed.next_batch()] for _ in range(30)] == expected
    with pytest.raises(Gpt2pipeError, match="belongs to other document_aligned "):
        ShardLoader(shards, 2, 16, shuffle=True, seed=3).load_state_dict(state)
    old = ShardLoader(shards, 2, 16, shuffle=True, seed=3).state_dict()
    del old["document_aligned"]  # saved before the option existed: an unaligned run, resumed as one
    ShardLoader(shards, 2, 16, shuffle=True, seed=3).load_state_dict(old)
    with pytest.raises(Gpt2pipeError, match="belongs to other document_aligned "):
        ShardLoader(shards, 2, 16, **kw).load_state_dict(old)


def test_document_aligned_on_real_shards(tiny_shards):
    """Tiny Shakespeare's speeches tokenized by the real stage: every row opens a speech."""
    from gpt2pipe.data.llmc_format import ShardSet
    from gpt2pipe.data.tokenizer import gpt2

    shards = ShardSet.open(tiny_shards)
    loader = ShardLoader(shards.train, 4, 32, shuffle=True, seed=0, document_aligned=True)
    plain = ShardLoader(shards.train, 4, 32, shuffle=True, seed=0)
    assert 0 < loader.per_epoch < plain.per_epoch  # cut tails of documents are skipped
    for _ in range(loader.per_epoch):
        x, _ = loader.next_batch()
        assert (x[:, 0] == EOT).all()
        text = gpt2().decode(x[0, 1:].tolist())
        assert text[:1].isupper() or text[:1] in "'\"", text  # a speaker's name opens every speech
    with pytest.raises(Gpt2pipeError, match="no shard holds 4 document-aligned rows of 4000"):
        ShardLoader(shards.train, 4, 4000, document_aligned=True)


def test_document_aligned_token_outside_the_vocabulary_names_its_position(tmp_path):
    toks = np.array(([EOT] + [5] * 11) * 10)  # documents of 12 tokens: rows of 8+1 start at 0, 12, 24, ...
    toks[24 + 3] = 50300  # inside the third row
    write_shard(tmp_path / "bad.bin", toks)
    loader = ShardLoader([tmp_path / "bad.bin"], 1, 8, vocab_size=50257, document_aligned=True)
    assert loader.rows[0].tolist() == [0, 12, 24, 36, 48, 60, 72, 84, 96, 108]
    starts(loader, 2)
    with pytest.raises(Gpt2pipeError, match=r"bad.bin: token 50300 at position 27 is outside the vocabulary"):
        loader.next_batch()


# --- the training loop's one-ahead device batches (data/prefetch.py) ----------------------------------

@pytest.mark.parametrize("world", [1, 2])
def test_prefetching_changes_no_batch_and_a_state_saved_with_one_ahead_resumes_on_it(tmp_path, world):
    import torch

    from gpt2pipe.data.prefetch import DeviceBatches

    shards = shards_of(tmp_path, [100, 50, 85])  # 28 windows per epoch: 30 batches cross an epoch boundary
    plain = ShardLoader(shards, 1, 8, world - 1, world, shuffle=True, seed=3)
    expected = [plain.next_batch() for _ in range(30)]
    batches = DeviceBatches(ShardLoader(shards, 1, 8, world - 1, world, shuffle=True, seed=3), torch.device("cpu"))
    # saved where the batch fetched ahead is the next epoch's first (global sample 28): the state is in epoch 0
    save_at = 28 // world - 2
    got, saved = [], None
    for i in range(30):
        got.append(batches.next_batch())
        batches.prefetch()  # as Trainer.train_step does after each micro-batch
        batches.prefetch()  # a second call fetches nothing more
        if i == save_at:
            saved = json.loads(json.dumps(batches.state_dict()))
    assert all(torch.equal(a, b) for g, e in zip(got, expected) for a, b in zip(g, e))
    assert saved["sample"] == 28 - world and saved["epoch"] == 0  # the batch fetched ahead is not counted as read
    resumed = DeviceBatches(ShardLoader(shards, 1, 8, world - 1, world, shuffle=True, seed=3), torch.device("cpu"))
    resumed.prefetch()  # a batch fetched before the load is dropped, not handed out
    resumed.load_state_dict(saved)
    for want in expected[save_at + 1:]:
        assert all(torch.equal(a, b) for a, b in zip(resumed.next_batch(), want))


def test_a_batch_that_fails_to_read_fails_when_it_is_asked_for_not_when_fetched_ahead(tmp_path, monkeypatch):
    import torch

    from gpt2pipe.data.prefetch import DeviceBatches

    tokens = np.arange(40)
    tokens[27] = 50300  # in the fourth window of 8 (+1) tokens
    write_shard(tmp_path / "bad.bin", tokens)
    batches = DeviceBatches(ShardLoader([tmp_path / "bad.bin"], 1, 8), torch.device("cpu"))
    for _ in range(3):
        batches.next_batch()
        batches.prefetch()  # the third prefetch reads the bad window: nothing raised yet
    assert batches.state_dict()["sample"] == 3  # the failed read moved nothing
    with pytest.raises(Gpt2pipeError, match=r"bad.bin: token 50300 at position 27 is outside the vocabulary"):
        batches.next_batch()
    # a failed copy (the batch read, then no GPU memory) puts the position back, so the batch is read again
    good = DeviceBatches(ShardLoader([tmp_path / "bad.bin"], 1, 8), torch.device("cpu"))
    good.next_batch()
    real_to = torch.Tensor.to
    with monkeypatch.context() as m:
        m.setattr(torch.Tensor, "to", lambda *a, **k: (_ for _ in ()).throw(torch.OutOfMemoryError("no memory")))
        good.prefetch()
    assert torch.Tensor.to is real_to and good.state_dict()["sample"] == 1
    # a load drops a pending failure with the batch ahead
    batches.prefetch()
    batches.load_state_dict(good.state_dict())
    assert batches.next_batch()[0].tolist() == [list(range(8, 16))]
    with pytest.raises(torch.OutOfMemoryError):
        good.next_batch()
    assert good.next_batch()[0].tolist() == [list(range(8, 16))]


def test_a_new_epoch_is_announced_when_its_first_batch_is_handed_out_not_when_fetched_ahead(tmp_path):
    import torch

    from gpt2pipe.data.prefetch import DeviceBatches

    lines = []
    shards = shards_of(tmp_path, [100, 50])  # 18 samples per epoch
    batches = DeviceBatches(ShardLoader(shards, 1, 8, shuffle=True, seed=0, log=lines.append), torch.device("cpu"))
    for _ in range(18):  # a run that ends with the epoch: the last prefetch reads epoch 1's first batch
        batches.next_batch()
        batches.prefetch()
    assert lines == []
    saved = batches.state_dict()
    batches.next_batch()
    assert lines == ["data: epoch 1 begins (18 samples of 1x8 tokens per epoch, reshuffled)"]
    resumed = DeviceBatches(ShardLoader(shards, 1, 8, shuffle=True, seed=0, log=lines.append), torch.device("cpu"))
    resumed.load_state_dict(saved)  # resumed at the boundary: the state is in epoch 1 already, so, as a
    resumed.prefetch()              # ShardLoader resumed there, it says nothing; then epoch 2 is said once
    for _ in range(19):
        resumed.next_batch()
        resumed.prefetch()
    assert lines[1:] == ["data: epoch 2 begins (18 samples of 1x8 tokens per epoch, reshuffled)"]
