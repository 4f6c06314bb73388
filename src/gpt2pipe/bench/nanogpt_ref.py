"""The bench's `nanogpt` baseline: the project's speed reference, a plain nanoGPT-style GPT-2 step under
torch.compile as a user writes it in ~100 lines (the team's reference script nanogpt_step.py; one H200, 2026-12-03:
967-971 ms/step at 124M where the bench's `compile` mode took 1038.5 ms). Copied here on 2026-12-04 with its
model, loss and optimizer unchanged, its shapes taken from the bench's ModelConfig so every GPT-2 size runs:
vocabulary padded as the config pads it, learned positions, pre-LayerNorm blocks with biases, tanh GELU, SDPA in
torch's default order (flash first), tied weights, the cross-entropy over the padded vocabulary inside the
compiled graph; torch's fused AdamW over every parameter (lr 6e-4, weight decay 0.1), clip 1.0, bf16 autocast.
The bench times it through its own step (bench/step.py): the same tokens, accumulation and timing as every mode.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt2pipe.config import ModelConfig


class Block(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        C = c.n_embd
        self.n_head = c.n_head
        self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.qkv, self.proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.fc, self.fc2 = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).contiguous().view(B, T, C))
        return x + self.fc2(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class NanoGPT(nn.Module):
    """forward(idx, targets) -> the mean cross-entropy over the padded vocabulary (nanoGPT's loss)."""

    def __init__(self, c: ModelConfig):
        super().__init__()
        self.V = c.padded_vocab_size
        self.wte, self.wpe = nn.Embedding(self.V, c.n_embd), nn.Embedding(c.block_size, c.n_embd)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.lnf = nn.LayerNorm(c.n_embd)
        self.head = nn.Linear(c.n_embd, self.V, bias=False)
        self.head.weight = self.wte.weight

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for b in self.blocks:
            x = b(x)
        logits = self.head(self.lnf(x))
        return F.cross_entropy(logits.float().view(-1, self.V), targets.reshape(-1))


def optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    cuda = next(model.parameters()).device.type == "cuda"
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, fused=cuda)


def update(opt: torch.optim.Optimizer, model: nn.Module) -> torch.Tensor:
    """The reference's step after the accumulated backward passes; returns the pre-clip gradient norm."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return norm
