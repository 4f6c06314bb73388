"""GPT-2 BPE through tiktoken, built offline from the vendored r50k_base ranks (checked by sha256)."""

from __future__ import annotations

import functools
import hashlib
from importlib import resources

import tiktoken
from tiktoken.load import load_tiktoken_bpe

from . import Gpt2pipeError

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
