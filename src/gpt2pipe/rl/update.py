"""The optimisation epochs over one batch of experience: PPO (policy and value model, several epochs of
shuffled mini-batches) and GRPO (the policy alone, KL to the reference in the loss).

A mini-batch is one optimizer step over rl.mini_batch_size rows of the whole batch (every process holds the
whole batch's experience and shuffles it alike: shard.py). Each process takes its share of the mini-batch's
rows and runs it as micro-batches of rl.forward_batch rows whose gradients add up. A micro-batch's loss is its
part of the mini-batch's: its rows' sum over the mini-batch's count (of tokens for token means, of sequences
for GRPO's mean over sequences), so the parts add up to the same loss however the mini-batch is split, over
micro-batches or processes. The statistics are such parts too, summed over all processes.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from gpt2pipe import distributed
from gpt2pipe.distributed import World
from gpt2pipe.rl import losses
from gpt2pipe.rl.graphed import MicroStep, graphs_apply
from gpt2pipe.rl.policy import response_logprobs
from gpt2pipe.rl.rollout import Experience
from gpt2pipe.rl.shard import share
from gpt2pipe.train.optim import optimizer_step


def _minibatches(n: int, size: int, gen: torch.Generator):
    perm = torch.randperm(n, generator=gen)
    return [perm[i : i + size] for i in range(0, n, size)]


def _micro(rows: torch.Tensor, size: int):
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def _optimise(exp: Experience, rl, passes: int, optimizers: list, gen: torch.Generator, lr: float, device,
              world: World, micro: MicroStep) -> dict:
    """`passes` over exp in shuffled mini-batches, one optimizer step each; micro(rows, mb_mask) runs one
    micro-batch's forward and backward and gives its statistics as parts of the mini-batch's (mb_mask: the
    whole mini-batch's mask). Returns each statistic's mean over the optimizer steps."""
    sums, steps = defaultdict(float), 0
    for _ in range(passes):
        for mb in _minibatches(exp.seq.shape[0], rl.mini_batch_size, gen):
            mb_mask = exp.mask[mb.to(device)]
            parts = _micro(mb[share(len(mb), world)], rl.forward_batch)
            for k, rows in enumerate(parts):
                if k == len(parts) - 1:
                    for opt in optimizers:
                        opt.prepare_last_backward()
                for key, v in micro(exp.rows(rows.to(device)), mb_mask).items():
                    sums[key] = sums[key] + v
            for opt in optimizers:
                optimizer_step(opt, lr)
            steps += 1
    keys = sorted(sums)
    totals = distributed.total(torch.stack([sums[k] for k in keys]), world) / steps
    return dict(zip(keys, totals))


def ppo_loss(policy, value, rl, ctx):
    """loss_of(e, mb_mask) -> (loss, statistics) of PPO's clipped policy and value losses (token means over
    each mini-batch)."""
    def loss_of(e: Experience, mb_mask: torch.Tensor):
        part = losses.part_of(mb_mask.sum())
        with ctx:
            logp, entropy = response_logprobs(policy, e.seq, e.valid, e.P, rl.temperature, entropy=True)
            values = value(e.seq, e.valid, e.P)
        pg, pg_clip, approx_kl = losses.policy_loss(logp, e.old_logp, e.advantages, e.mask, rl.cliprange, part)
        vf, vf_clip = losses.value_loss(values, e.values, e.returns, e.mask, rl.cliprange_value, part)
        return pg + rl.vf_coef * vf, {
            "policy/clipfrac_avg": pg_clip, "val/clipfrac_avg": vf_clip, "policy/approxkl_avg": approx_kl,
            "loss/policy_avg": pg, "loss/value_avg": vf, "objective/entropy": losses.masked_mean(entropy, e.mask, part)}

    return loss_of


def grpo_loss(policy, rl, ctx):
    """loss_of(e, mb_mask) of TRL's GRPO loss: the clipped surrogate with one advantage per sequence
    (e.advantages [B]) and beta x k3-KL to the reference, averaged over each sequence's tokens, then over
    sequences."""
    def loss_of(e: Experience, mb_mask: torch.Tensor):
        part = losses.part_of(mb_mask.sum())
        with ctx:
            logp, entropy = response_logprobs(policy, e.seq, e.valid, e.P, rl.temperature, entropy=True)
        adv = e.advantages[:, None].expand_as(logp)
        ratio = (logp - e.old_logp).exp()
        surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - rl.cliprange, 1 + rl.cliprange) * adv)
        kl = losses.kl_k3(logp, e.ref_logp)
        per_seq = (-(surrogate - rl.grpo_beta * kl) * e.mask).sum(1) / e.mask.sum(1).clamp(min=1)
        loss = per_seq.sum() / len(mb_mask)  # this part of the mean over the mini-batch's sequences
        clipped = ((ratio - 1).abs() > rl.cliprange).float()
        return loss, {"loss/policy_avg": loss, "policy/clipfrac_avg": losses.masked_mean(clipped, e.mask, part),
                      "objective/entropy": losses.masked_mean(entropy, e.mask, part),
                      "grpo/kl_k3": losses.masked_mean(kl, e.mask, part)}

    return loss_of


class Updater:
    """The optimisation of one batch of experience: PPO (rl.ppo_epochs passes, policy and value model) or GRPO
    (rl.grpo_iterations passes, the policy alone). Made once a run: its recorded micro-steps (rl/graphed.py)
    are replayed step after step."""

    def __init__(self, rl, policy, value, optimizers: list, ctx, device, world: World = World()):
        ppo = rl.algorithm == "ppo"
        loss_of = ppo_loss(policy, value, rl, ctx) if ppo else grpo_loss(policy, rl, ctx)
        # the optimizers average the processes' gradients: each sends world.size x its part of the sum
        self.micro = MicroStep(loss_of, world.size, graphs_apply(policy, optimizers, device, world.size))
        self.passes = rl.ppo_epochs if ppo else rl.grpo_iterations
        self.rl, self.optimizers, self.device, self.world = rl, optimizers, device, world

    def __call__(self, exp: Experience, gen: torch.Generator, lr: float) -> dict:
        """exp's advantages (and PPO's returns) already set; the statistics' means over the optimizer steps."""
        return _optimise(exp, self.rl, self.passes, self.optimizers, gen, lr, self.device, self.world, self.micro)
