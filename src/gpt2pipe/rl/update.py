"""The optimisation epochs over one batch of experience: PPO (policy and value model, several epochs of
shuffled mini-batches) and GRPO (the policy alone, KL to the reference in the loss).

A mini-batch is one optimizer step; it runs as micro-batches of rl.forward_batch rows whose gradients add up
(each micro-batch's loss weighted by its share of the mini-batch's rows). Several processes each hold
their own rows: the optimizers average gradients across them (as in `train`), and the statistics are
reduced over all of them.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from gpt2pipe.rl import losses
from gpt2pipe.rl.policy import response_logprobs
from gpt2pipe.rl.rollout import Experience


def _minibatches(n: int, size: int, gen: torch.Generator):
    perm = torch.randperm(n, generator=gen)
    return [perm[i : i + size] for i in range(0, n, size)]


def _micro(rows: torch.Tensor, size: int):
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def ppo(exp: Experience, policy, value, opt_policy, opt_value, rl, ctx, gen: torch.Generator, lr: float,
        device) -> dict:
    """rl.ppo_epochs passes over exp (advantages and returns already set); returns mean statistics."""
    stats = defaultdict(list)
    n = exp.seq.shape[0]
    for _ in range(rl.ppo_epochs):
        for mb in _minibatches(n, rl.mini_batch_size, gen):
            parts = _micro(mb, rl.forward_batch)
            for k, rows in enumerate(parts):
                if k == len(parts) - 1:
                    opt_policy.prepare_last_backward()
                    opt_value.prepare_last_backward()
                e = exp.rows(rows.to(device))
                with ctx:
                    logp, entropy = response_logprobs(policy, e.seq, e.valid, e.P, rl.temperature, entropy=True)
                    values = value(e.seq, e.valid, e.P)
                pg, pg_clip, approx_kl = losses.policy_loss(logp, e.old_logp, e.advantages, e.mask, rl.cliprange)
                vf, vf_clip = losses.value_loss(values, e.values, e.returns, e.mask, rl.cliprange_value)
                weight = len(rows) / len(mb)
                ((pg + rl.vf_coef * vf) * weight).backward()
                for key, v in (("policy/clipfrac_avg", pg_clip), ("val/clipfrac_avg", vf_clip),
                               ("policy/approxkl_avg", approx_kl), ("loss/policy_avg", pg.detach()),
                               ("loss/value_avg", vf.detach()),
                               ("objective/entropy", losses.masked_mean(entropy.detach(), e.mask))):
                    stats[key].append(v)
            opt_policy.global_norm()
            opt_value.global_norm()
            opt_policy.update(lr)
            opt_value.update(lr)
    return {k: torch.stack(v).mean() for k, v in stats.items()}


def grpo(exp: Experience, policy, opt_policy, rl, ctx, gen: torch.Generator, lr: float, device) -> dict:
    """rl.grpo_iterations passes of TRL's GRPO loss: the clipped surrogate with one advantage per sequence
    (exp.advantages [B]) and beta x k3-KL to the reference, averaged over each sequence's tokens, then over
    sequences."""
    stats = defaultdict(list)
    n = exp.seq.shape[0]
    for _ in range(rl.grpo_iterations):
        for mb in _minibatches(n, rl.mini_batch_size, gen):
            parts = _micro(mb, rl.forward_batch)
            for k, rows in enumerate(parts):
                if k == len(parts) - 1:
                    opt_policy.prepare_last_backward()
                e = exp.rows(rows.to(device))
                with ctx:
                    logp, entropy = response_logprobs(policy, e.seq, e.valid, e.P, rl.temperature, entropy=True)
                adv = e.advantages[:, None].expand_as(logp)
                ratio = (logp - e.old_logp).exp()
                surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - rl.cliprange, 1 + rl.cliprange) * adv)
                kl = losses.kl_k3(logp, e.ref_logp)
                per_token = -(surrogate - rl.grpo_beta * kl)
                per_seq = (per_token * e.mask).sum(1) / e.mask.sum(1).clamp(min=1)
                loss = per_seq.mean()
                (loss * len(rows) / len(mb)).backward()
                clipped = ((ratio - 1).abs() > rl.cliprange).float()
                for key, v in (("loss/policy_avg", loss.detach()), ("policy/clipfrac_avg", losses.masked_mean(clipped, e.mask)),
                               ("objective/entropy", losses.masked_mean(entropy.detach(), e.mask)),
                               ("grpo/kl_k3", losses.masked_mean(kl.detach(), e.mask))):
                    stats[key].append(v)
            opt_policy.global_norm()
            opt_policy.update(lr)
    return {k: torch.stack(v).mean() for k, v in stats.items()}
