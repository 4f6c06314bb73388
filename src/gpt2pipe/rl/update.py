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
from gpt2pipe.train.optim import optimizer_step


def _minibatches(n: int, size: int, gen: torch.Generator):
    perm = torch.randperm(n, generator=gen)
    return [perm[i : i + size] for i in range(0, n, size)]


def _micro(rows: torch.Tensor, size: int):
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def _optimise(exp: Experience, rl, passes: int, optimizers: list, gen: torch.Generator, lr: float, device,
              loss_of) -> dict:
    """`passes` over exp in shuffled mini-batches, one optimizer step each; loss_of(rows) -> (loss, stats)
    of one micro-batch. Returns each statistic's mean."""
    stats = defaultdict(list)
    n = exp.seq.shape[0]
    for _ in range(passes):
        for mb in _minibatches(n, rl.mini_batch_size, gen):
            parts = _micro(mb, rl.forward_batch)
            for k, rows in enumerate(parts):
                if k == len(parts) - 1:
                    for opt in optimizers:
                        opt.prepare_last_backward()
                loss, micro_stats = loss_of(exp.rows(rows.to(device)))
                (loss * len(rows) / len(mb)).backward()
                for key, v in micro_stats.items():
                    stats[key].append(v.detach())
            for opt in optimizers:
                optimizer_step(opt, lr)
    return {k: torch.stack(v).mean() for k, v in stats.items()}


def ppo(exp: Experience, policy, value, opt_policy, opt_value, rl, ctx, gen: torch.Generator, lr: float,
        device) -> dict:
    """rl.ppo_epochs passes over exp (advantages and returns already set); the statistics' means."""
    def loss_of(e: Experience):
        with ctx:
            logp, entropy = response_logprobs(policy, e.seq, e.valid, e.P, rl.temperature, entropy=True)
            values = value(e.seq, e.valid, e.P)
        pg, pg_clip, approx_kl = losses.policy_loss(logp, e.old_logp, e.advantages, e.mask, rl.cliprange)
        vf, vf_clip = losses.value_loss(values, e.values, e.returns, e.mask, rl.cliprange_value)
        return pg + rl.vf_coef * vf, {
            "policy/clipfrac_avg": pg_clip, "val/clipfrac_avg": vf_clip, "policy/approxkl_avg": approx_kl,
            "loss/policy_avg": pg, "loss/value_avg": vf, "objective/entropy": losses.masked_mean(entropy, e.mask)}

    return _optimise(exp, rl, rl.ppo_epochs, [opt_policy, opt_value], gen, lr, device, loss_of)


def grpo(exp: Experience, policy, opt_policy, rl, ctx, gen: torch.Generator, lr: float, device) -> dict:
    """rl.grpo_iterations passes of TRL's GRPO loss: the clipped surrogate with one advantage per sequence
    (exp.advantages [B]) and beta x k3-KL to the reference, averaged over each sequence's tokens, then over
    sequences."""
    def loss_of(e: Experience):
        with ctx:
            logp, entropy = response_logprobs(policy, e.seq, e.valid, e.P, rl.temperature, entropy=True)
        adv = e.advantages[:, None].expand_as(logp)
        ratio = (logp - e.old_logp).exp()
        surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - rl.cliprange, 1 + rl.cliprange) * adv)
        kl = losses.kl_k3(logp, e.ref_logp)
        per_seq = (-(surrogate - rl.grpo_beta * kl) * e.mask).sum(1) / e.mask.sum(1).clamp(min=1)
        loss = per_seq.mean()
        clipped = ((ratio - 1).abs() > rl.cliprange).float()
        return loss, {"loss/policy_avg": loss, "policy/clipfrac_avg": losses.masked_mean(clipped, e.mask),
                      "objective/entropy": losses.masked_mean(entropy, e.mask),
                      "grpo/kl_k3": losses.masked_mean(kl, e.mask)}

    return _optimise(exp, rl, rl.grpo_iterations, [opt_policy], gen, lr, device, loss_of)
