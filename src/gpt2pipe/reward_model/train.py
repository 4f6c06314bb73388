"""The reward-model stage: pairs in (checked before any model exists), a trained reward model out.

  <run>/reward_model/model.pt          the reward model (trunk + head + normalisation; model.load reads it)
  <run>/reward_model/reward_model.log  one line per optimizer step: loss, pair accuracy, learning rate, seconds
  <run>/reward_model/eval.json         held-out pair accuracy and loss before and after training, the split
  <run>/reward_model/pairs.jsonl       the pairs made by `reward_model.pairs: sentiment` (a record of them)

One process; a rerun trains again from the start (seconds to minutes: one or a few epochs over the pairs).
Every output is written whole or not at all, and the stale ones of an earlier run are removed first.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from pathlib import Path

import torch

from gpt2pipe import Gpt2pipeError, layout
from gpt2pipe.config import Config
from gpt2pipe.device import autocast, autocast_dtype, pick_device, seed_everything
from gpt2pipe.files import atomic_path, write_json
from gpt2pipe.model.load import load_any
from gpt2pipe.reward_model import model as rm_mod, pairs as pairs_mod
from gpt2pipe.reward_model.pairs import Pair

COLUMNS = ["step", "loss", "accuracy", "lr", "seconds"]


def default_init(cfg: Config) -> Path:
    return layout.checkpoint(cfg.raw, cfg.train.max_steps)


def _prompts(cfg: Config, shards_dir: Path | None) -> list[list[int]]:
    from gpt2pipe.data.llmc_format import ShardSet, read_shard
    from gpt2pipe.rl.prompts import from_shard

    c = cfg.reward_model
    shards = ShardSet.open(shards_dir or layout.shard_dir(cfg.raw), vocab_size=cfg.model.vocab_size)
    return from_shard(read_shard(shards.val[0]), c.num_prompts, c.prompt_tokens, c.seed, str(shards.val[0]))


@torch.no_grad()
def evaluate(rm, pairs: list[Pair], c, ctx) -> dict:
    """Held-out pair accuracy (a tie counts half) and Bradley–Terry loss."""
    rm.eval()
    prompts = [p.prompt for p in pairs]
    rc = rm_mod.scores(rm, prompts, [p.chosen for p in pairs], c.max_tokens, c.forward_batch, ctx)
    rr = rm_mod.scores(rm, prompts, [p.rejected for p in pairs], c.max_tokens, c.forward_batch, ctx)
    acc = ((rc > rr).float() + 0.5 * (rc == rr).float()).mean().item()
    return {"accuracy": acc, "loss": rm_mod.bradley_terry(rc, rr).item(), "n": len(pairs),
            "ci95": 1.96 * math.sqrt(max(acc * (1 - acc), 1e-12) / len(pairs))}


@torch.no_grad()
def normalisation(rm, pairs: list[Pair], c, ctx, n: int = 2048) -> tuple[float, float]:
    """(gain, bias) that give the scores mean 0 and std 1 over the responses of (up to n) training pairs:
    lm-human-preferences normalises its reward model on the prompt distribution the same way."""
    some = pairs[:n]
    prompts = [p.prompt for p in some] * 2
    r = rm_mod.scores(rm, prompts, [p.chosen for p in some] + [p.rejected for p in some], c.max_tokens,
                      c.forward_batch, ctx)
    std = r.std().item() if len(r) > 1 else 1.0
    gain = 1.0 / std if std > 1e-8 else 1.0
    return gain, -r.mean().item() * gain


def run(cfg: Config, run_dir: Path, shards_dir: Path | None = None, progress: bool = True) -> dict:
    c = cfg.reward_model
    if c is None:
        raise Gpt2pipeError("the config has no reward_model section: add `reward_model: {}` "
                            "(see `gpt2pipe config --describe`)")
    # --- inputs first: the pairs file, the starting model, the shards ------------------------------------
    given = None if c.pairs == "sentiment" else pairs_mod.read(c.pairs)
    init = Path(c.init_from) if c.init_from else default_init(cfg)
    if not init.exists():
        raise Gpt2pipeError(f"{init}: no model to start the reward model from (train the run first, or set "
                            "reward_model.init_from)")
    prompts = _prompts(cfg, shards_dir) if given is None else None
    vader = pairs_mod.vader() if given is None else None  # the labeller loads before any model
    device = pick_device(cfg.train.device)
    seed_everything(c.seed)
    trunk, _ = load_any(init)
    max_tokens = min(c.max_tokens, trunk.config.block_size)
    c = dataclasses.replace(c, max_tokens=max_tokens)
    out = Path(run_dir) / "reward_model"
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("model.pt", "eval.json", "reward_model.log", "pairs.jsonl"):
        (out / stale).unlink(missing_ok=True)
    ctx = autocast(device, autocast_dtype(device, cfg.train.dtype))
    trunk.to(device)
    if given is None:  # the starting model's own continuations, labelled by VADER
        from gpt2pipe.model.decode import sampling_copy

        t0 = time.perf_counter()
        given = pairs_mod.from_samples(sampling_copy(trunk.eval()), prompts, c.response_tokens, c.temperature,
                                       c.margin, c.seed, c.pairs_per_prompt, score=vader)
        print(f"gpt2pipe reward-model: {len(given)} pairs from {len(prompts)} prompts x "
              f"{2 * c.pairs_per_prompt} samples "
              f"(VADER margin {c.margin}) in {time.perf_counter() - t0:.1f} s", flush=True)
        if len(given) < 4:
            raise Gpt2pipeError(f"reward_model: only {len(given)} pairs of continuations of {len(prompts)} prompts "
                                "differ in VADER score by reward_model.margin: raise reward_model.num_prompts or "
                                "reward_model.pairs_per_prompt, or lower reward_model.margin")
        pairs_mod.write(out / "pairs.jsonl", given)
        trunk.__dict__.pop("_decoders", None)  # the sampler's KV caches (on a CPU it samples with the trunk itself)
    shuffled = list(given)
    random.Random(c.seed).shuffle(shuffled)
    train_pairs, eval_pairs = pairs_mod.split(shuffled, c.eval_pairs)
    rm = rm_mod.RewardModel(trunk).to(device)
    before = evaluate(rm, eval_pairs, c, ctx)
    print(f"gpt2pipe reward-model: from {init} ({trunk.num_params() / 1e6:.2f}M parameters on {device}), "
          f"{len(train_pairs)} training pairs, {len(eval_pairs)} held out; held-out pair accuracy "
          f"{before['accuracy']:.4f} before training", flush=True)
    history = train(rm, train_pairs, c, ctx, device, out / "reward_model.log", progress)
    after = evaluate(rm, eval_pairs, c, ctx)
    gain, bias = normalisation(rm, train_pairs, c, ctx) if c.normalize else (1.0, 0.0)
    rm.gain.fill_(gain)
    rm.bias.fill_(bias)
    rm_mod.save(out / "model.pt", rm, len(history), max_tokens=c.max_tokens, init=str(init))
    result = {"held_out": after, "before": before, "train_pairs": len(train_pairs), "steps": len(history),
              "normalisation": {"gain": gain, "bias": bias}, "init": str(init),
              "pairs": str(out / "pairs.jsonl") if c.pairs == "sentiment" else c.pairs}
    write_json(out / "eval.json", result)
    print(f"gpt2pipe reward-model: held-out pair accuracy {after['accuracy']:.4f} ± {after['ci95']:.4f} "
          f"({after['n']} pairs; {before['accuracy']:.4f} before), loss {after['loss']:.4f} -> {out / 'model.pt'}",
          flush=True)
    return {**result, "history": history}


def train(rm, pairs: list[Pair], c, ctx, device, log_path: Path, progress: bool) -> list[dict]:
    """c.epochs passes over pairs in seeded shuffled batches of c.batch_size, one AdamW step each (micro-
    batches of c.forward_batch pairs, chosen and rejected in one forward), the rate decaying linearly to 0
    (lm-human-preferences). Writes the log whole at the end."""
    from gpt2pipe.progress import tqdm

    params = [p for p in rm.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    rest = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": c.weight_decay}, {"params": rest, "weight_decay": 0.0}],
                            lr=c.learning_rate, betas=(0.9, 0.95), eps=1e-8)
    per_epoch = math.ceil(len(pairs) / c.batch_size)
    total = c.epochs * per_epoch
    gen = torch.Generator().manual_seed(c.seed)
    history = []
    bar = tqdm(total=total, disable=not progress, desc="reward-model", unit="step", dynamic_ncols=True)
    for step in range(total):
        if step % per_epoch == 0:
            order = torch.randperm(len(pairs), generator=gen).tolist()
        t0 = time.perf_counter()
        k = step % per_epoch
        batch = [pairs[i] for i in order[k * c.batch_size : (k + 1) * c.batch_size]]
        lr = c.learning_rate * (1 - step / total)
        for g in opt.param_groups:
            g["lr"] = lr
        rm.train()
        loss_sum, right = 0.0, 0.0
        for i in range(0, len(batch), c.forward_batch):
            part = batch[i : i + c.forward_batch]
            rows = rm_mod.encode([p.prompt for p in part] * 2, [p.chosen for p in part] + [p.rejected for p in part],
                                 c.max_tokens)
            seq, lengths = rm_mod.right_pad(rows, device)
            with ctx:
                r = rm(seq, lengths)
            rc, rr = r[: len(part)], r[len(part) :]
            loss = rm_mod.bradley_terry(rc, rr)
            (loss * len(part) / len(batch)).backward()
            loss_sum += loss.item() * len(part)
            right += ((rc > rr).float() + 0.5 * (rc == rr).float()).sum().item()
        if c.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, c.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        row = {"step": step, "loss": loss_sum / len(batch), "accuracy": right / len(batch), "lr": lr,
               "seconds": time.perf_counter() - t0}
        history.append(row)
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['accuracy']:.2f}")
    bar.close()
    with atomic_path(log_path) as tmp:
        tmp.write_text("\t".join(COLUMNS) + "\n" + "".join(
            "\t".join(f"{r[k]:.6g}" if isinstance(r[k], float) else str(r[k]) for k in COLUMNS) + "\n"
            for r in history))
    return history
