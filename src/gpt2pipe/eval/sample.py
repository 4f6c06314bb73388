"""Text generation from a model: temperature and top-k sampling, reproducible from a seed."""

from __future__ import annotations

import torch

from gpt2pipe.model.gpt import GPT
from gpt2pipe.data.tokenizer import EOT, gpt2


@torch.no_grad()
def generate(model: GPT, prompt: str = "", max_new_tokens: int = 64, temperature: float = 1.0, top_k: int | None = 50,
             num_samples: int = 1, seed: int = 42, device: torch.device | str = "cpu") -> list[str]:
    """Continue `prompt` (after an <|endoftext|>, as documents start in training) num_samples times.
    temperature 0 means greedy; the prompt is not repeated in the returned texts."""
    model.eval()
    enc = gpt2()
    start = [EOT, *enc.encode_ordinary(prompt)]
    idx = torch.tensor([start] * num_samples, dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    block = model.config.block_size
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -block:])
        logits = logits[:, -1, :].float()
        if temperature == 0:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k:
                kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)
        idx = torch.cat([idx, nxt], dim=1)
    out = []
    for row in idx[:, len(start) :].tolist():
        if EOT in row:
            row = row[: row.index(EOT)]  # a document ends at the next <|endoftext|>
        out.append(enc.decode(row))
    return out
