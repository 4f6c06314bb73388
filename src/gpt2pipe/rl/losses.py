"""The arithmetic of PPO and GRPO on [B, R] response tensors with a mask of real tokens, as plain functions.

Means and variances over the mask take a `total`: by default the tensor's own sums; part_of(count) makes a
micro-batch's mean its part of a larger mini-batch's (its sum over the mini-batch's count), so losses do not
depend on how a mini-batch is split over micro-batches and processes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Total = Callable[[torch.Tensor], torch.Tensor]


def _local(x: torch.Tensor) -> torch.Tensor:
    return x


def masked_mean(x: torch.Tensor, mask: torch.Tensor, total: Total = _local) -> torch.Tensor:
    sums = total(torch.stack([(x * mask).sum(), mask.sum().to(x.dtype)]))
    return sums[0] / sums[1].clamp(min=1)


def part_of(count: torch.Tensor) -> Total:
    """A `total` for one micro-batch of a mini-batch of `count` masked entries (spread over micro-batches and
    processes): the sum stays the micro-batch's, the count is the mini-batch's, so the micro-batches' masked
    means add up to the mini-batch's, as one pass over it would give."""
    return lambda sums: torch.stack([sums[0], count.to(sums.dtype)])


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, total: Total = _local) -> torch.Tensor:
    """(x - mean) / std over the masked entries (TRL's masked_whiten: unbiased variance, eps 1e-8);
    shift_mean=False keeps the mean (lm-human-preferences whitens rewards that way)."""
    mean = masked_mean(x, mask, total)
    sums = total(torch.stack([((x - mean) ** 2 * mask).sum(), mask.sum().to(x.dtype)]))
    var = sums[0] / (sums[1] - 1).clamp(min=1)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return (out if shift_mean else out + mean) * mask


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalised advantage estimation over each response (Schulman et al. 2016): returns (advantages,
    returns), zero past each response's end, where the value of the state after the last token is 0."""
    values, rewards = values * mask, rewards * mask
    last = torch.zeros_like(values[:, 0])
    adv = torch.zeros_like(values)
    for t in reversed(range(values.shape[1])):
        next_value = values[:, t + 1] if t + 1 < values.shape[1] else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        last = last * mask[:, t]
        adv[:, t] = last
    return adv, (adv + values) * mask


def policy_loss(logp, old_logp, adv, mask, clip: float, total: Total = _local):
    """PPO's clipped surrogate (to minimise), its clip fraction and approx-KL (0.5 E[(log r)^2], TRL's)."""
    log_ratio = (logp - old_logp) * mask
    ratio = log_ratio.exp()
    losses = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip))
    clipped = (-adv * ratio.clamp(1 - clip, 1 + clip) > -adv * ratio).to(logp.dtype)
    return (masked_mean(losses, mask, total), masked_mean(clipped, mask, total).detach(),
            masked_mean(0.5 * log_ratio.detach() ** 2, mask, total))


def value_loss(values, old_values, returns, mask, clip: float, total: Total = _local):
    """PPO's clipped value loss 0.5 max((v - R)^2, (clip(v) - R)^2) and its clip fraction."""
    clipped_v = old_values + (values - old_values).clamp(-clip, clip)
    a, b = (values - returns) ** 2, (clipped_v - returns) ** 2
    return 0.5 * masked_mean(torch.maximum(a, b), mask, total), masked_mean((b > a).to(values.dtype), mask, total).detach()


def group_advantages(scores: torch.Tensor, k: int) -> torch.Tensor:
    """GRPO: each score against the other samples of its prompt, (s - mean) / (std + 1e-4); rows of one
    prompt are consecutive, k to a prompt."""
    groups = scores.view(-1, k)
    return ((groups - groups.mean(1, keepdim=True)) / (groups.std(1, keepdim=True) + 1e-4)).flatten()


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(policy || reference) estimate exp(d) - d - 1, d = ref - logp (unbiased, >= 0: Schulman's
    k3, what GRPO puts in its loss)."""
    d = ref_logp - logp
    return d.exp() - d - 1


class FixedKL:
    """A constant KL coefficient."""

    def __init__(self, value: float):
        self.value = value

    def update(self, current_kl: float, n_steps: int) -> None:
        pass


class AdaptiveKL:
    """lm-human-preferences' AdaptiveKLController: move the coefficient so the KL approaches `target`, by at
    most 20% of the error, over `horizon` samples."""

    def __init__(self, value: float, target: float, horizon: int):
        self.value, self.target, self.horizon = value, target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_steps / self.horizon
