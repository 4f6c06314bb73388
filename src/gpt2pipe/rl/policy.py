"""The models of RL: the policy (a GPT), its frozen reference, and the value model (a copy of the policy's
trunk with a scalar head), with the forwards the losses need.

A batch of sequences is [prompt | response] of fixed widths P and R. Prompts of equal length need no padding
and run the model's own path (`GPT.hidden`: the kernels on a GPU, as `train` runs them); left-padded prompts
(a prompt file with prompts of several lengths) run model/decode.py's masked forward with per-row positions.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt2pipe.model.decode import CachedGPT, plain_copy, positions
from gpt2pipe.model.gpt import GPT


def hidden(model: GPT, seq: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """The final norm's output [B, T, C]; valid [B, T] marks real tokens (None: no padding)."""
    if valid is None:
        return model.hidden(seq)
    net = CachedGPT(model, seq.shape[0], seq.shape[1])
    net.key_valid.copy_(valid)
    return net.forward(seq, positions(valid), torch.zeros((), dtype=torch.long, device=seq.device))


def response_logprobs(model: GPT, seq: torch.Tensor, valid: torch.Tensor | None, P: int, temperature: float,
                      entropy: bool = False):
    """log p(response token) [B, R] at the sampling temperature (what the sampler drew from: the N details'
    "logprobs at the sampling temperature"), fp32; with entropy=True also the entropy of each step's
    distribution."""
    h = hidden(model, seq, valid)[:, P - 1 : -1]
    logits = F.linear(h, model.lm_head.weight[: model.config.vocab_size]).float() / max(temperature, 1e-7)
    logp_all = torch.log_softmax(logits, -1)
    logp = logp_all.gather(-1, seq[:, P:, None]).squeeze(-1)
    if not entropy:
        return logp
    return logp, -(logp_all.exp() * logp_all).sum(-1)


class ValueModel(nn.Module):
    """V(state) for each position: a GPT trunk (initialised as the policy's) and a linear scalar head,
    initialised to zero so the first values are 0 and the first advantages the rewards themselves."""

    def __init__(self, trunk: GPT):
        super().__init__()
        self.trunk = trunk
        self.head = nn.Linear(trunk.config.n_embd, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, seq: torch.Tensor, valid: torch.Tensor | None, P: int) -> torch.Tensor:
        """Values [B, R] fp32 of the states before each response token."""
        h = hidden(self.trunk, seq, valid)[:, P - 1 : -1]
        return F.linear(h.float(), self.head.weight.float(), self.head.bias.float()).squeeze(-1)


def value_model_from(policy: GPT) -> ValueModel:
    trunk = plain_copy(policy)
    if not policy.config.tie_embeddings:  # an untied LM head plays no part in a value: not trained
        trunk.lm_head.requires_grad_(False)
    return ValueModel(trunk)


def frozen_copy(model: GPT) -> GPT:
    ref = plain_copy(model).eval()
    return ref.requires_grad_(False)
