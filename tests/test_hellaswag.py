import json
import re

import pytest
import torch

from gpt2pipe import Gpt2pipeError
from gpt2pipe.eval import hellaswag
from gpt2pipe.eval.hellaswag import Example, encode_bin, read_bin, read_jsonl, render, score, write_bin

from conftest import ROOT


class NextTokenModel(torch.nn.Module):
    """A stand-in LM: at every position it predicts `token + 1` with probability ~1."""

    def __init__(self, vocab=64, block_size=32):
        super().__init__()
        self.vocab = vocab
        self.config = type("C", (), {"block_size": block_size})()

    def forward(self, idx):
        logits = torch.full((*idx.shape, self.vocab), -10.0)
        logits.scatter_(2, ((idx + 1) % self.vocab).unsqueeze(-1), 10.0)
        return logits, None


def test_scoring_on_a_hand_made_example():
    # context 1 2 3; the model expects 4 5 6 ... next.
    # ending 0: 9 9 9 9 9 9 (long, all wrong) ; ending 1: 4 5 6 7 8 20 (5 right, 1 wrong: lowest mean loss)
    # ending 2: 30 (one wrong token); ending 3: 4 (one right token: lowest mean and summed loss)
    ex = Example(0, label=1, context=[1, 2, 3], endings=[[9] * 6, [4, 5, 6, 7, 8, 20], [30], [4]])
    tokens, mask, labels = render([ex], block_size=32)
    assert tokens.shape == (4, 9) and mask[1].tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1]
    logits, _ = NextTokenModel()(tokens)
    total, mean = hellaswag.ending_losses(logits, tokens, mask)
    assert mean.argmin().item() == 3 and total.argmin().item() == 3
    # without the one-token right answer: ending 1 has 2 of 7 tokens wrong (lowest mean loss), ending 2 has
    # its single token wrong (lowest summed loss), endings 0 and 3 are all wrong
    ex2 = Example(1, label=1, context=[1, 2, 3], endings=[[9] * 6, [4, 5, 6, 7, 8, 20, 40], [30], [31, 50]])
    result = score(NextTokenModel(), [ex2], torch.device("cpu"), torch.autocast("cpu", enabled=False), progress=False)
    assert result == {"hellaswag_acc_norm": 1.0, "hellaswag_acc": 0.0, "hellaswag_examples": 1}


def test_long_rows_keep_their_ending():
    ex = Example(0, 0, list(range(1, 40)), [[50, 51], [52], [53], [54]])
    tokens, mask, _ = render([ex], block_size=16)
    assert tokens.shape[1] == 16 and tokens[0, -2:].tolist() == [50, 51] and mask[0].sum() == 2


def test_an_ending_longer_than_the_block_is_scored_not_a_crash():
    """The context gives way first; an ending that alone fills the block keeps its first block_size - 1
    tokens after the last context token, so scoring runs and still sees which ending the model expects."""
    right = list(range(11, 31))  # 20 tokens, each the context's successor: what NextTokenModel predicts
    ex = Example(0, 1, list(range(1, 11)), [[90] * 20, right, [91] * 20, [92] * 3])
    tokens, mask, _ = render([ex], block_size=16)
    assert tokens.shape == (4, 16)
    assert tokens[1].tolist() == [10, *range(11, 26)] and mask[1].tolist() == [0] + [1] * 15
    assert tokens[3].tolist()[:16] == [*range(1, 11), 92, 92, 92, 0, 0, 0]  # short rows keep their whole context
    model = NextTokenModel(vocab=128, block_size=16)
    result = score(model, [ex], torch.device("cpu"), torch.autocast("cpu", enabled=False), progress=False)
    assert result["hellaswag_acc_norm"] == 1.0


def test_fit_row_keeps_the_ending_and_cuts_the_context_from_the_left():
    assert hellaswag.fit_row([1, 2, 3, 4], [5, 6], 4) == ([3, 4, 5, 6], 2)
    assert hellaswag.fit_row([1, 2], [5, 6, 7, 8, 9], 4) == ([2, 5, 6, 7], 3)
    assert hellaswag.fit_row([], [5, 6, 7, 8, 9], 4) == ([5, 6, 7, 8], 4)
    assert hellaswag.fit_row([1], [5], 4) == ([1, 5], 1)


@pytest.mark.parametrize("row, message", [
    ({"ctx": "A man", "endings": "abcd", "label": 0}, "endings must be a list of 4 strings, got a str"),
    ({"ctx": "A man", "endings": ["a", "b", "c"], "label": 0}, "endings must be a list of 4 strings, got a list of 3"),
    ({"ctx": "A man", "endings": ["a", "b", "c", 4], "label": 0}, "endings must be a list of 4 strings"),
    ({"ctx": ["A man"], "endings": ["a", "b", "c", "d"], "label": 0}, "ctx must be a string, got list"),
    ({"ctx": "A man", "endings": ["a", "b", "c", "d"], "label": 4}, "label must be 0..3, got 4"),
])
def test_malformed_rows_are_named(tmp_path, row, message):
    good = {"ctx": "A man", "endings": ["a", "b", "c", "d"], "label": 0}
    (tmp_path / "h.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(Gpt2pipeError, match=f"h.jsonl:2: {re.escape(message)}"):
        read_jsonl(tmp_path / "h.jsonl")


def test_jsonl_endings_get_llmc_leading_space(tmp_path):
    rows = [{"ind": 0, "ctx": "A man is sitting on a roof. he", "label": 3,
             "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                         "is holding a rubik's cube.", "starts pulling up roofing on a roof."]}]
    (tmp_path / "official.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    demo = read_jsonl(hellaswag.demo_jsonl(), max_examples=1)
    official = read_jsonl(tmp_path / "official.jsonl")
    assert official == demo  # the official text (no leading space) and llm.c's decoded text agree
    assert demo[0].endings[3][0] == 4940  # " starts"


def test_bin_round_trip_and_llmc_layout(tmp_path):
    examples = read_jsonl(hellaswag.demo_jsonl())
    assert len(examples) == 200
    write_bin(tmp_path / "h.bin", examples)
    assert read_bin(tmp_path / "h.bin") == examples
    raw = (tmp_path / "h.bin").read_bytes()
    import numpy as np

    header = np.frombuffer(raw[:1024], dtype="<i4")
    assert list(header[:3]) == [20240522, 1, 200]
    first = np.frombuffer(raw[1024:1034], dtype="<u2").tolist()
    ex = examples[0]
    assert first == [65535, 2 * (6 + len(ex.context) + sum(1 + len(e) for e in ex.endings)), 0, ex.label, 4]
    assert read_bin(tmp_path / "h.bin", max_examples=5) == examples[:5]


def test_corrupt_eval_files(tmp_path):
    data = encode_bin(read_jsonl(hellaswag.demo_jsonl(), max_examples=3))
    (tmp_path / "trunc.bin").write_bytes(data[:-20])
    with pytest.raises(Gpt2pipeError, match="trunc.bin: corrupt eval file"):
        read_bin(tmp_path / "trunc.bin")
    (tmp_path / "magic.bin").write_bytes(b"\x00" * 4 + data[4:])
    with pytest.raises(Gpt2pipeError, match="not an llm.c eval file"):
        read_bin(tmp_path / "magic.bin")
    (tmp_path / "bad.jsonl").write_text('{"ctx": "x"}\n')
    with pytest.raises(Gpt2pipeError, match="bad.jsonl:1: not a HellaSwag row"):
        read_jsonl(tmp_path / "bad.jsonl")


def test_full_validation_split_matches_llmc_tokens(tmp_path):
    """The whole split (decoded from llm.c's hellaswag_val.bin, carried in tests/data) passes the download
    check, and our .bin reader returns exactly what the jsonl tokenizes to."""
    import lzma

    full = tmp_path / "hellaswag_val.jsonl"
    full.write_bytes(lzma.decompress((ROOT / "tests" / "data" / "hellaswag_val.jsonl.xz").read_bytes()))
    hellaswag.check_full(full)
    examples = read_jsonl(full)
    write_bin(tmp_path / "val.bin", examples)
    assert read_bin(tmp_path / "val.bin") == examples
    assert (tmp_path / "val.bin").stat().st_size == 3_762_386
    (tmp_path / "short.jsonl").write_text("".join(full.read_text().splitlines(True)[:10]))
    with pytest.raises(Gpt2pipeError, match="10 rows, the HellaSwag validation split has 10042"):
        hellaswag.check_full(tmp_path / "short.jsonl")
