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

from gpt2pipe import Gpt2pipeError
from gpt2pipe.model.decode import CachedGPT, plain_copy, positions
from gpt2pipe.model.gpt import GPT
from gpt2pipe.reward_model.model import zero_head


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
    # the whole padded head, its padding columns cut after: a GEMM of 50,257 rows fell to a slow unaligned
    # kernel on the H200 (1.3 ms a 64-row chunk, as in the sampler)
    logits = F.linear(h, model.lm_head.weight)[..., : model.config.vocab_size].float() / max(temperature, 1e-7)
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
        self.head = zero_head(trunk.config.n_embd)

    def forward(self, seq: torch.Tensor, valid: torch.Tensor | None, P: int) -> torch.Tensor:
        """Values [B, R] fp32 of the states before each response token."""
        h = hidden(self.trunk, seq, valid)[:, P - 1 : -1]
        return F.linear(h.float(), self.head.weight.float(), self.head.bias.float()).squeeze(-1)


def value_model_from(policy: GPT, reward_model=None) -> ValueModel:
    """A copy of the policy's trunk with a zero head, or (given a reward_model.model.RewardModel) a copy of
    the reward model's trunk and head, its normalisation folded into the head: V starts as the reward model's
    score of each prefix (lm-human-preferences initialises its value function from the reward model)."""
    source = policy if reward_model is None else reward_model.trunk
    if source.config.vocab_size != policy.config.vocab_size:
        raise Gpt2pipeError(f"the reward model's vocabulary ({source.config.vocab_size}) is not the policy's "
                            f"({policy.config.vocab_size}): it cannot start the value model")
    if source.config.block_size < policy.config.block_size:
        raise Gpt2pipeError(f"the reward model reads {source.config.block_size} tokens, the policy "
                            f"{policy.config.block_size}: it cannot start the value model")
    trunk = plain_copy(source)
    trunk.ops = policy.ops  # the policy's path (kernels or torch), which its optimizer expects
    if not trunk.config.tie_embeddings:  # an untied LM head plays no part in a value: not trained
        trunk.lm_head.requires_grad_(False)
    value = ValueModel(trunk)
    if reward_model is not None:
        with torch.no_grad():
            gain, bias = reward_model.gain.float(), reward_model.bias.float()
            value.head.weight.copy_(gain * reward_model.head.weight.float())
            value.head.bias.copy_(gain * reward_model.head.bias.float() + bias)
    return value


def frozen_copy(model: GPT) -> GPT:
    ref = plain_copy(model).eval()
    return ref.requires_grad_(False)
