import pytest

from gpt2pipe.data import tokenizer


def test_gpt2_encoding_known_ids():
    enc = tokenizer.gpt2()
    assert enc.n_vocab == 50257
    assert enc.eot_token == 50256
    # ids from OpenAI's GPT-2 encoder.json
    assert enc.encode_ordinary("Hello world") == [15496, 995]
    assert enc.encode_ordinary(" the") == [262]
    assert enc.encode_ordinary("A man is sitting on a roof. he") == [32, 582, 318, 5586, 319, 257, 9753, 13, 339]
    assert enc.encode("<|endoftext|>", allowed_special="all") == [50256]
    text = "To be, or not to be: that is the question.\n\n  Whether 'tis nobler 123"
    assert enc.decode(enc.encode_ordinary(text)) == text


def test_special_tokens_in_text_are_not_parsed():
    assert 50256 not in tokenizer.gpt2().encode_ordinary("<|endoftext|>")


def test_documents_are_prefixed_with_eot():
    docs = tokenizer.encode_documents(["Hello world", "Hi"])
    assert docs[0] == [50256, 15496, 995]
    assert docs[1][0] == 50256
    assert tokenizer.encode_document("Hello world") == docs[0]


def test_corrupt_ranks_file_is_refused(monkeypatch, tmp_path):
    from importlib import resources

    fake = tmp_path / "gpt2pipe"
    (fake / "assets").mkdir(parents=True)
    (fake / "assets" / "r50k_base.tiktoken").write_bytes(b"SGVsbG8= 0\n")
    monkeypatch.setattr(resources, "files", lambda pkg: fake)
    tokenizer.gpt2.cache_clear()
    try:
        with pytest.raises(Exception, match="sha256 mismatch"):
            tokenizer.gpt2()
    finally:
        monkeypatch.undo()
        tokenizer.gpt2.cache_clear()
