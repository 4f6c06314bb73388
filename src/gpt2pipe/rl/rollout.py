"""One batch of experience: sample responses to the prompts, score them, and (PPO) shape the rewards.

Responses end at the first <|endoftext|> (kept as the response's last token, so the policy learns to end) or
after rl.max_new_tokens. The score goes to the last token of the response (the N details' "reward at the
last response token"); every token also pays kl_coef x (log pi - log pi_ref), the per-token KL penalty of
Ziegler et al.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from gpt2pipe.data.tokenizer import EOT, gpt2
from gpt2pipe.model.decode import sample, sampling_copy
from gpt2pipe.model.gpt import GPT
from gpt2pipe.rl import rewards as rewards_mod
from gpt2pipe.rl.policy import response_logprobs


@dataclass
class Experience:
    seq: torch.Tensor              # [B, P + R] prompt (left-padded) and response tokens
    valid: torch.Tensor | None     # [B, P + R] real tokens, None without padding
    P: int
    mask: torch.Tensor             # [B, R] response tokens up to and with the stop token
    scores: torch.Tensor           # [B] the reward function's scores (after any missing-EOS penalty)
    old_logp: torch.Tensor         # [B, R] the sampling policy's log-probabilities
    ref_logp: torch.Tensor         # [B, R]
    prompts: list[str]
    responses: list[str]
    values: torch.Tensor | None = None     # PPO: [B, R]
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None

    def rows(self, idx: torch.Tensor) -> Experience:
        """The experience of rows idx (tensors only; texts are not needed in updates)."""
        picked = {}
        for f in fields(self):
            v = getattr(self, f.name)
            picked[f.name] = v[idx] if isinstance(v, torch.Tensor) else v
        return Experience(**picked)


def _texts(tokens: list[list[int]]) -> list[str]:
    enc = gpt2()
    return [enc.decode([t for t in row if t != EOT]) for row in tokens]


def _to_host(*tensors: torch.Tensor):
    """Start copying CUDA tensors to the host without waiting; the returned function waits for the copies
    (not for work queued after them) and gives the tensors as lists."""
    if tensors[0].device.type != "cuda":
        return lambda: [t.tolist() for t in tensors]
    pinned = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in tensors]
    for dst, src in zip(pinned, tensors):
        dst.copy_(src, non_blocking=True)
    done = torch.cuda.Event()
    done.record(torch.cuda.current_stream(tensors[0].device))  # the stream the copies were queued on

    def wait():
        done.synchronize()
        return [t.tolist() for t in pinned]

    return wait


@torch.no_grad()
def collect(policy: GPT, ref: GPT, prompts: list[list[int]], rl, reward_fn, gen: torch.Generator, ctx,
            forward_batch: int, sampler: GPT | None = None, value=None, rows: slice | None = None,
            global_batch: int | None = None) -> Experience:
    """Sample (with `sampler`, the policy's sampling_copy, default a new one), score, and compute the
    log-probabilities of policy and reference and (given the value model) the values (rl: the RLConfig).
    rows, global_batch: the prompts are these rows of a batch spread over processes (sample()'s noise)."""
    device = next(policy.parameters()).device
    sampler = sampler or sampling_copy(policy)
    # on CUDA the decode step is fused by torch.compile once per shape (train and held-out batches), then
    # replayed as a CUDA graph: 1.3x the plain recorded step on the H200 (docs/rl.md)
    out = sample(sampler, prompts, rl.max_new_tokens, rl.temperature, None, gen, EOT, pad=EOT, rows=rows,
                 global_batch=global_batch, attention="reduce", compiled=device.type == "cuda")
    P, R = out.prompts.shape[1], rl.max_new_tokens
    seq = torch.cat([out.prompts, out.tokens], 1)
    valid = None
    if not bool(out.prompt_valid.all()):
        valid = torch.cat([out.prompt_valid, torch.ones_like(out.tokens, dtype=torch.bool)], 1)
    mask = (torch.arange(R, device=device)[None, :] < out.lengths[:, None]).float()
    # the tokens travel to the host while the GPU runs the forwards queued below: the texts and the reward
    # (VADER: ~17 ms of CPU for 256 responses on the H200's host) overlap them
    sampled = _to_host(out.tokens, out.lengths)
    old, refs, values = [], [], []
    for rows in torch.arange(len(prompts), device=device).split(forward_batch):
        v = None if valid is None else valid[rows]
        with ctx:
            old.append(response_logprobs(policy, seq[rows], v, P, rl.temperature))
            refs.append(response_logprobs(ref, seq[rows], v, P, rl.temperature))
            if value is not None:
                values.append(value(seq[rows], v, P))
    tokens, lengths = sampled()
    response_tokens = [row[:n] for row, n in zip(tokens, lengths)]
    responses = _texts(response_tokens)
    prompt_texts = _texts(prompts)
    scores = rewards_mod.score(reward_fn, rl.reward, prompt_texts, responses).to(device)
    if rl.missing_eos_penalty is not None:  # TRL's: a response cut at max_new_tokens scores less
        ended = torch.tensor([EOT in r for r in response_tokens], device=device)
        scores = torch.where(ended, scores, scores - rl.missing_eos_penalty)
    return Experience(seq, valid, P, mask, scores, torch.cat(old) * mask, torch.cat(refs) * mask,
                      prompt_texts, responses, torch.cat(values) * mask if values else None)


@torch.no_grad()
def shape_rewards(exp: Experience, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token rewards [B, R], per-sequence KL [B]): -kl_coef x KL on every token, the score added at the
    last one."""
    kl = (exp.old_logp - exp.ref_logp) * exp.mask
    rewards = -kl_coef * kl
    last = (exp.mask.sum(1).long() - 1).clamp(min=0)
    rewards[torch.arange(len(last), device=last.device), last] += exp.scores
    return rewards * exp.mask, kl.sum(1)
