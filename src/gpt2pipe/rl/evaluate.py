"""Score a policy on the held-out prompts: reward and KL to the reference (mean with a 95% interval), and a
few of its responses (as text, and in the JSON with their rewards), each file named by step (step 0: the
pre-trained model itself)."""

from __future__ import annotations

import json
import math

import torch

from gpt2pipe.files import atomic_path
from gpt2pipe.rl.rollout import collect


def _mean_ci(x: torch.Tensor) -> dict:
    n = len(x)
    sd = x.float().std().item() if n > 1 else 0.0
    return {"mean": x.float().mean().item(), "ci95": 1.96 * sd / math.sqrt(n), "n": n}


def held_out(policy, ref, prompts, rl, reward_fn, ctx, step: int, out_dir, seed: int, sampler=None,
             shown: int = 8) -> dict:
    """rl/eval_NNNNNN.json and samples_NNNNNN.txt of this step; the same seeded draws at every step."""
    device = next(policy.parameters()).device
    gen = torch.Generator(device).manual_seed(seed)
    result = {"step": step}
    scores, kls = [], []
    for i in range(0, len(prompts), rl.batch_size):
        exp = collect(policy, ref, prompts[i : i + rl.batch_size], rl, reward_fn, gen, ctx, rl.forward_batch, sampler)
        scores.append(exp.scores.cpu())
        kls.append(((exp.old_logp - exp.ref_logp) * exp.mask).sum(1).cpu())
        if i == 0:
            texts = [(p, r) for p, r in zip(exp.prompts[:shown], exp.responses[:shown])]
            rewards = exp.scores[:shown].tolist()
    result["reward"], result["kl"] = _mean_ci(torch.cat(scores)), _mean_ci(torch.cat(kls))
    # the shown responses with their rewards, for the report to set each step's beside step 0's (same prompts)
    result["samples"] = [{"prompt": p, "response": r, "reward": s} for (p, r), s in zip(texts, rewards)]
    with atomic_path(out_dir / f"eval_{step:06d}.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    body = "".join(f"--- prompt {k}\n{p}\n--- response (step {step})\n{r}\n" for k, (p, r) in enumerate(texts))
    with atomic_path(out_dir / f"samples_{step:06d}.txt") as tmp:
        tmp.write_text(body)
    return result
