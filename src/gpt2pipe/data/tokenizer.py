"""GPT-2 BPE through tiktoken, built offline from the vendored r50k_base ranks (checked by sha256)."""

from __future__ import annotations

import functools
import hashlib
from importlib import resources

import tiktoken
from tiktoken.load import load_tiktoken_bpe

from gpt2pipe import Gpt2pipeError

EOT = 50256  # <|endoftext|>, also the document delimiter in every shard
VOCAB_SIZE = 50257
RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
# GPT-2's pre-tokenization regex (tiktoken's r50k_pat_str)
PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@functools.cache
def gpt2() -> tiktoken.Encoding:
    """The `gpt2` encoding (50257 tokens, <|endoftext|> = 50256), identical to tiktoken.get_encoding('gpt2')."""
    path = resources.files("gpt2pipe") / "assets" / "r50k_base.tiktoken"
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != RANKS_SHA256:
        raise Gpt2pipeError(f"{path}: sha256 mismatch, the vendored GPT-2 BPE ranks are corrupt")
    ranks = load_tiktoken_bpe(str(path), expected_hash=RANKS_SHA256)
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=PAT_STR,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": EOT},
        explicit_n_vocab=VOCAB_SIZE,
    )


def encode_document(text: str) -> list[int]:
    """A document as it goes into a shard: <|endoftext|> first, then its tokens (special tokens not parsed)."""
    return [EOT, *gpt2().encode_ordinary(text)]


def encode_documents(texts: list[str]) -> list[list[int]]:
    """Batch form of encode_document (tiktoken encodes the batch on its own threads)."""
    return [[EOT, *toks] for toks in gpt2().encode_ordinary_batch(texts)]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used in vocab.json / merges.txt."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def _merge_pair(ranks: dict[bytes, int], token: bytes) -> tuple[bytes, bytes]:
    """The two tokens BPE merged into `token`: run BPE on its bytes using only lower-ranked merges."""
    limit = ranks[token]
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        best = min(range(len(parts) - 1), key=lambda i: ranks.get(parts[i] + parts[i + 1], limit))
        if ranks.get(parts[best] + parts[best + 1], limit) >= limit:
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    if len(parts) != 2:
        raise ValueError(f"token {token!r} is not a merge of two lower-ranked tokens")
    return parts[0], parts[1]


@functools.cache
def hf_tokenizer_files(model_max_length: int = 1024) -> dict[str, str]:
    """vocab.json, merges.txt and configs of the GPT-2 tokenizer for a Hugging Face directory, rebuilt from
    the vendored ranks (tiktoken keeps the ranks; the merge list is recovered by re-running BPE)."""
    import json

    ranks = gpt2()._mergeable_ranks
    u = _bytes_to_unicode()
    text = lambda b: "".join(u[x] for x in b)  # noqa: E731
    vocab = {text(tok): rank for tok, rank in ranks.items()}
    vocab["<|endoftext|>"] = EOT
    merges = ["#version: 0.2"]
    for tok, _ in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) > 1:
            a, b = _merge_pair(ranks, tok)
            merges.append(f"{text(a)} {text(b)}")
    special = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    config = {"model_max_length": model_max_length, "tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False,
              **special}
    return {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "\n".join(merges) + "\n",
        "tokenizer_config.json": json.dumps(config, indent=2) + "\n",
        "special_tokens_map.json": json.dumps(special, indent=2) + "\n",
    }
