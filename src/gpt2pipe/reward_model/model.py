"""The reward model: a GPT trunk and a linear scalar head read at the last real token of [prompt | response].

Sequences are right-padded, so every real token keeps its position and (causal attention) its hidden state:
padding cannot change a score. The file is the project's checkpoint (model/checkpoint.py: tensors and plain
values, read with weights_only=True, so a file someone hands you never runs code), with kind "reward-model",
the head, and the gain and bias that normalise the scores (lm-human-preferences: mean 0 and std 1 over
responses to the training prompts).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt2pipe import Gpt2pipeError
from gpt2pipe.data.tokenizer import EOT, gpt2
from gpt2pipe.model import checkpoint
from gpt2pipe.model.decode import plain_copy
from gpt2pipe.model.gpt import GPT

KIND = "reward-model"


def zero_head(width: int) -> nn.Linear:
    """A scalar head on a trunk's hidden states, at zero: every first output is 0 (the value model's
    head too)."""
    head = nn.Linear(width, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


class RewardModel(nn.Module):
    """r(prompt, response) = gain * (head . h_last) + bias, h_last the final norm's output at the last real
    token. The head starts at zero (every first score 0, the Bradley–Terry loss log 2)."""

    def __init__(self, trunk: GPT):
        super().__init__()
        self.trunk = trunk
        self.head = zero_head(trunk.config.n_embd)
        if not trunk.config.tie_embeddings:  # an untied LM head plays no part in a score: not trained
            trunk.lm_head.requires_grad_(False)
        self.register_buffer("gain", torch.ones(()))
        self.register_buffer("bias", torch.zeros(()))

    def forward(self, seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Scores [B] fp32 of right-padded sequences seq [B, T] with lengths[i] real tokens."""
        h = self.trunk.hidden(seq)
        last = h[torch.arange(len(seq), device=seq.device), lengths - 1]
        r = F.linear(last.float(), self.head.weight.float(), self.head.bias.float()).squeeze(-1)
        return self.gain * r + self.bias


def from_trunk(model: GPT) -> RewardModel:
    return RewardModel(plain_copy(model))


def encode(prompts: list[str], responses: list[str], max_tokens: int) -> list[list[int]]:
    """<|endoftext|> + prompt + response tokens (a document start, as pre-training saw); a longer sequence
    keeps its first token and its last max_tokens - 1 (the response's end is what the head reads)."""
    enc = gpt2()
    out = []
    for p, r in zip(prompts, responses):
        toks = enc.encode_ordinary(p) + enc.encode_ordinary(r)
        out.append([EOT, *toks[-(max_tokens - 1):]] if max_tokens > 1 else [EOT])
    return out


def right_pad(rows: list[list[int]], device, pad: int = EOT) -> tuple[torch.Tensor, torch.Tensor]:
    """(seq [B, T], lengths [B]) with each row at the left end of its row of seq."""
    T = max(len(r) for r in rows)
    seq = torch.full((len(rows), T), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        seq[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return seq.to(device), torch.tensor([len(r) for r in rows], device=device)


def bradley_terry(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(r_chosen - r_rejected), the mean over pairs."""
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def fingerprint(rm: RewardModel) -> str:
    """A digest of the head and normalisation: a retrained reward model has another (RL's resume checks it)."""
    import hashlib

    h = hashlib.sha256()
    for t in (rm.head.weight, rm.head.bias, rm.gain, rm.bias):
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def save(path: str | Path, rm: RewardModel, step: int, **extra) -> None:
    checkpoint.save(path, rm.trunk, step, kind=KIND,
                    head={"weight": rm.head.weight.detach().float().cpu(), "bias": rm.head.bias.detach().float().cpu()},
                    gain=float(rm.gain), bias=float(rm.bias), **extra)


def load(path: str | Path) -> tuple[RewardModel, dict]:
    """A reward model saved by `save` (fp32, CPU); anything else is refused in one line naming the file."""
    ck = checkpoint.read(path)
    if ck.get("kind") != KIND or not isinstance(ck.get("head"), dict):
        raise Gpt2pipeError(f"{path}: not a reward model (a checkpoint of `gpt2pipe reward-model`; this one is "
                            f"{ck.get('kind') or 'a language model'})")
    trunk = GPT(checkpoint.model_config(path, ck))
    trunk.load_state_dict({k: v.float() for k, v in ck["model"].items()})
    rm = RewardModel(trunk)
    try:
        rm.head.load_state_dict({k: v.float() for k, v in ck["head"].items()})
        rm.gain.fill_(float(ck["gain"]))
        rm.bias.fill_(float(ck["bias"]))
    except (KeyError, RuntimeError, TypeError, ValueError) as e:
        raise Gpt2pipeError(f"{path}: reward model head unreadable ({type(e).__name__}: {e})") from None
    return rm.eval(), ck


@torch.no_grad()
def scores(rm: RewardModel, prompts: list[str], responses: list[str], max_tokens: int, batch: int,
           ctx=None) -> torch.Tensor:
    """The model's scores [B] (fp32, on the model's device), in batches of `batch` rows."""
    import contextlib

    device = next(rm.parameters()).device
    rows = encode(prompts, responses, max_tokens)
    out = []
    for i in range(0, len(rows), batch):
        seq, lengths = right_pad(rows[i : i + batch], device)
        with ctx or contextlib.nullcontext():
            out.append(rm(seq, lengths).float())
    return torch.cat(out) if out else torch.zeros(0, device=device)


class Scorer:
    """rl.reward `reward_model`: the trained model as a reward function, f(prompts, responses) -> scores.
    The RL stage moves it to its device (`to`) once that is chosen."""

    def __init__(self, path: str | Path, batch: int = 64):
        self.path = Path(path)
        if not self.path.exists():
            raise Gpt2pipeError(f"{self.path}: no reward model (run `gpt2pipe reward-model` first, or set "
                                "rl.reward_model)")
        self.model, ck = load(self.path)
        self.max_tokens = int(ck.get("max_tokens", self.model.trunk.config.block_size))
        self.batch, self.ctx = batch, None

    def to(self, device: torch.device) -> Scorer:
        from gpt2pipe.device import autocast, autocast_dtype

        self.model.to(device)
        self.ctx = autocast(device, autocast_dtype(device))
        return self

    def __call__(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        return scores(self.model, prompts, responses, self.max_tokens, self.batch, self.ctx).cpu()
