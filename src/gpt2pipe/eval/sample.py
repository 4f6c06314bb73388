"""Text generation from a model: temperature and top-k sampling, reproducible from a seed.

A sample is `max_new_tokens` tokens, as llm.c samples: a document boundary the model emits shows as
`<|endoftext|>` in the text. Stopping at the first <|endoftext|> instead made the samples of a young model
one character long (it ends documents early and often), so stopping is opt-in and only after `min_tokens`.
"""

from __future__ import annotations

import torch

from gpt2pipe import Gpt2pipeError
from gpt2pipe.data.tokenizer import EOT, gpt2
from gpt2pipe.model.decode import pick, sample
from gpt2pipe.model.gpt import GPT


def _cut(row: list[int], min_tokens: int | None) -> list[int]:
    """The tokens of one sample: all of them, or those before the first EOT that has min_tokens before it."""
    if min_tokens is None:
        return row
    for i, tok in enumerate(row):
        if tok == EOT and i >= min_tokens:
            return row[:i]
    return row


@torch.no_grad()
def generate(model: GPT, prompt: str = "", max_new_tokens: int = 64, temperature: float = 1.0, top_k: int | None = 50,
             num_samples: int = 1, seed: int = 42, device: torch.device | str = "cpu",
             min_tokens: int | None = None) -> list[str]:
    """Continue `prompt` (after an <|endoftext|>, as documents start in training) num_samples times.

    Each sample is max_new_tokens tokens; with min_tokens it ends at the first <|endoftext|> that follows at
    least min_tokens tokens (0: at the first one). temperature 0 means greedy; the prompt is not repeated."""
    if max_new_tokens < 0 or (min_tokens is not None and min_tokens < 0):
        raise Gpt2pipeError(f"sample: token counts must be >= 0 (max_new_tokens {max_new_tokens}, "
                            f"min_tokens {min_tokens})")
    model.eval()
    enc = gpt2()
    start = [EOT, *enc.encode_ordinary(prompt)]
    gen = torch.Generator(device=device).manual_seed(seed)
    if isinstance(model, GPT) and len(start) + max_new_tokens <= model.config.block_size:  # KV cache, as RL's
        rows = sample(model, [start] * num_samples, max_new_tokens, temperature, top_k, gen).tokens.tolist()
    else:
        rows = _windowed(model, start, max_new_tokens, temperature, top_k, num_samples, gen, device, min_tokens)
    return [enc.decode(_cut(row, min_tokens)) for row in rows]


def _windowed(model: GPT, start: list[int], max_new_tokens: int, temperature: float, top_k: int | None,
              num_samples: int, gen: torch.Generator, device, min_tokens: int | None) -> list[list[int]]:
    """Past block_size: the whole window of the last block_size tokens again at every step (no cache)."""
    idx = torch.tensor([start] * num_samples, dtype=torch.long, device=device)
    block = model.config.block_size
    done = torch.zeros(num_samples, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        logits, _ = model(idx[:, -block:])
        nxt = pick(logits[:, -1, :].float(), temperature, top_k, gen)[:, None]
        idx = torch.cat([idx, nxt], dim=1)
        if min_tokens is not None and step >= min_tokens:
            done |= nxt[:, 0] == EOT
            if bool(done.all()):
                break  # every sample has ended: the rest would be cut anyway
    return idx[:, len(start) :].tolist()
