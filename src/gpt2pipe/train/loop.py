"""Stage 3: train GPT-2 on llm.c shards.

AdamW (decay on 2-D weights only), linear warmup + cosine decay, gradient clipping, gradient accumulation
up to a batch size in tokens, periodic validation, atomic checkpoints and exact resume. Logs in llm.c's
text format (`s:STEP trl:LOSS lr:LR norm:N`, `s:STEP tel:VAL`) so llm.c's tools read our logs and ours theirs.

Files under the run folder:
  train/train.log, train/model_NNNNNN.pt   — the stage's outputs (snapshots are hard links into state/)
  train_state/state.pt                      — latest full state (model, optimizer, loader, RNG) for --resume
  train_state/model_NNNNNN.pt, train.log    — survive a failed job, whose outputs Snakemake deletes
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from gpt2pipe import Gpt2pipeError
from gpt2pipe.model import checkpoint
from gpt2pipe import distributed
from gpt2pipe.config import Config, ModelConfig, TrainConfig
from gpt2pipe.distributed import World
from gpt2pipe.eval.evaluate import val_loss
from gpt2pipe.model.load import load_any
from gpt2pipe.files import atomic_path
from gpt2pipe.data.loader import ShardLoader
from gpt2pipe.model.gpt import GPT
from gpt2pipe.ops import kernels_available
from gpt2pipe.ops.optim import FlatAdamW, flat_state_from_torch, ordered_params, torch_state_from_flat
from gpt2pipe.device import autocast, autocast_dtype, peak_flops, pick_device, rng_state, seed_everything, set_rng_state
from gpt2pipe.data.shards import ShardSet


# test seam: behave as if a preemption signal arrived at this step (GPT2PIPE_PREEMPT_AT_STEP=N)
_PREEMPT_AT = int(os.environ.get("GPT2PIPE_PREEMPT_AT_STEP", "-1"))


def lr_at(step: int, t: TrainConfig) -> float:
    """llm.c's schedule: linear warmup over warmup_steps, then cosine from lr down to lr*final_lr_frac."""
    if step < t.warmup_steps:
        return t.learning_rate * (step + 1) / t.warmup_steps
    span = max(1, t.max_steps - t.warmup_steps)
    ratio = min(1.0, (step - t.warmup_steps) / span)
    min_lr = t.learning_rate * t.final_lr_frac
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (t.learning_rate - min_lr)


def make_optimizer(model: GPT, t: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=t.learning_rate, betas=(t.beta1, t.beta2), eps=t.eps,
                             fused=device.type == "cuda")


def make_flat_optimizer(model: GPT, t: TrainConfig, world: World = World(),
                        dtype: torch.dtype = torch.bfloat16) -> FlatAdamW:
    """AdamW on one flat buffer with fp32 master weights, ZeRO-1 sharded over the processes; with bf16
    (the kernels path) it turns the model's weights bf16."""
    return FlatAdamW(model, lr=t.learning_rate, betas=(t.beta1, t.beta2), eps=t.eps, weight_decay=t.weight_decay,
                     grad_clip=t.grad_clip, stochastic_rounding=t.stochastic_rounding, seed=t.seed, dtype=dtype,
                     world=world)


def clip_gradients(optimizer, model: GPT, grad_clip: float) -> torch.Tensor:
    """The pre-clip global gradient norm (a device tensor), clipping to grad_clip (0: no clipping).
    The flat optimizer only computes the clip factor here; it applies it inside its update."""
    if isinstance(optimizer, FlatAdamW):
        return optimizer.grad_norm()[0].clone()
    return torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float("inf"))


def apply_update(optimizer, lr: float) -> None:
    """Update with learning rate lr (after clip_gradients) and clear the gradients."""
    for g in optimizer.param_groups:
        g["lr"] = lr
    if isinstance(optimizer, FlatAdamW):
        optimizer.step(lr, norm_ready=True)
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def optimizer_step(optimizer, model: GPT, lr: float, grad_clip: float) -> torch.Tensor:
    """clip_gradients + apply_update; returns the pre-clip gradient norm."""
    norm = clip_gradients(optimizer, model, grad_clip)
    apply_update(optimizer, lr)
    return norm


class OutlierDetector:
    """z-score of a value against the previous `window` values (llm.c's outlier detector, window 128);
    nan until the window is full."""

    def __init__(self, window: int = 128):
        self.values: collections.deque[float] = collections.deque(maxlen=window)

    def update(self, x: float) -> float:
        z = float("nan")
        if len(self.values) == self.values.maxlen:
            mean = sum(self.values) / len(self.values)
            std = (sum((v - mean) ** 2 for v in self.values) / len(self.values)) ** 0.5
            z = (x - mean) / std if std > 0 else (0.0 if x == mean else math.inf)
        if math.isfinite(x):
            self.values.append(x)
        return z

    def state_dict(self) -> list[float]:
        return list(self.values)

    def load_state_dict(self, values: list[float]) -> None:
        self.values.extend(values)


class Preempted(Gpt2pipeError):
    """SIGTERM/SIGUSR1 arrived: the state was saved and the run should be requeued (exit code 75)."""

    exit_code = 75


@contextlib.contextmanager
def stop_signals():
    """Turn SIGTERM/SIGUSR1 (a scheduler's preemption notice) into a flag the training loop checks after
    each step; the previous handlers come back afterwards."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum))
                for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclass
class RunPaths:
    out: Path     # run_dir/train: the stage's declared outputs
    state: Path   # run_dir/train_state: what resume needs

    @classmethod
    def of(cls, run_dir: Path) -> RunPaths:
        return cls(Path(run_dir) / "train", Path(run_dir) / "train_state")

    def snapshot(self, step: int) -> Path:
        return self.state / f"model_{step:06d}.pt"

    def publish(self, step: int) -> None:
        """Expose a snapshot as an output: a hard link, so it costs no disk and survives output deletion."""
        dst = self.out / self.snapshot(step).name
        dst.unlink(missing_ok=True)
        try:
            os.link(self.snapshot(step), dst)
        except OSError:
            shutil.copy2(self.snapshot(step), dst)

    def publish_log(self) -> None:
        with atomic_path(self.out / "train.log") as tmp:
            shutil.copyfile(self.state / "train.log", tmp)


def keep_previous_states(state_dir: Path, keep: int, current_step: int | None) -> None:
    """Before a new state.pt is written: keep the current one (this run's, saved at current_step) as
    state_NNNNNN.pt if `keep` > 1, and delete all but the newest keep - 1 of those (model snapshots at
    checkpoint steps are milestones, never deleted)."""
    current = state_dir / "state.pt"
    if keep > 1 and current_step is not None and current.exists():
        os.replace(current, state_dir / f"state_{current_step:06d}.pt")
    for old in sorted(state_dir.glob("state_*.pt"))[: -(keep - 1) or None]:
        old.unlink()


class Log:
    """Append-only llm.c-format log; on resume, lines past the resumed step are dropped first."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        kept = []
        if resume_step is not None and path.exists():
            # the state at step k holds k updates: keep trl lines of steps < k and other lines of steps <= k
            for ln in path.read_text().splitlines(keepends=True):
                s, kind = int(ln[2:].split()[0]), ln.split()[1][:3]
                if s < resume_step or (s == resume_step and kind != "trl"):
                    kept.append(ln)
        path.write_text("".join(kept))
        self.f = open(path, "a")

    def write(self, line: str) -> None:
        self.f.write(line + "\n")
        self.f.flush()


def _resume_state(paths: RunPaths, cfg: Config, fingerprint: str) -> dict | None:
    """The saved state if it belongs to this config and has steps left; None means start fresh."""
    path = paths.state / "state.pt"
    if not path.exists():
        return None
    ck = checkpoint.read(path)
    checkpoint.check_shape(path, ModelConfig(**ck["model_config"]), cfg.model)
    if ck.get("fingerprint") != fingerprint:
        tqdm.write(f"{path}: saved under a different train/data config, starting fresh")
        return None
    if ck["step"] >= cfg.train.max_steps:
        tqdm.write(f"{path}: run already finished at step {ck['step']}, starting fresh")
        return None
    return ck


def train(cfg: Config, shards_dir: Path, run_dir: Path, resume: bool = False, progress: bool = True) -> dict:
    """Train on one process, or as one of several (torchrun / srun): each reads its own part of every
    batch and the optimizer is ZeRO-1 sharded; process 0 writes logs and checkpoints."""
    device = pick_device(cfg.train.device)
    world = distributed.setup(device.type)
    try:
        return _train(cfg, shards_dir, run_dir, resume, progress, world, device)
    finally:
        distributed.teardown(world)


def _train(cfg: Config, shards_dir: Path, run_dir: Path, resume: bool, progress: bool, world: World,
           device: torch.device) -> dict:
    t = cfg.train
    # --- everything that can fail on bad input happens before the model exists -----------------------
    shards = ShardSet.open(shards_dir)
    if device.type == "cuda" and world.distributed:
        device = torch.device("cuda", world.local_rank)
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    B, T = t.micro_batch_size, t.seq_len
    if t.total_batch_tokens % (B * T * world.size):
        raise Gpt2pipeError(f"train.total_batch_tokens {t.total_batch_tokens} is not a multiple of micro_batch_size "
                            f"x seq_len x {world.size} processes ({B * T * world.size})")
    grad_accum = t.total_batch_tokens // (B * T * world.size)
    train_loader = ShardLoader(shards.train, B, T, world.rank, world.size, vocab_size=cfg.model.vocab_size)
    val_loader = ShardLoader(shards.val, B, T, world.rank, world.size, vocab_size=cfg.model.vocab_size)
    paths = RunPaths.of(run_dir)
    paths.out.mkdir(parents=True, exist_ok=True)
    paths.state.mkdir(parents=True, exist_ok=True)
    fingerprint = cfg.fingerprint("model", "train", "data")
    saved = _resume_state(paths, cfg, fingerprint) if resume else None

    # --- model, optimizer, state ---------------------------------------------------------------------
    use_kernels = t.ops == "kernels" and device.type == "cuda" and kernels_available()
    if t.ops == "kernels" and not use_kernels:
        tqdm.write("train.ops is 'kernels' but no CUDA GPU with CuPy is available: running the torch reference path")
    seed_everything(t.seed)
    model = GPT(cfg.model, ops="kernels" if use_kernels else "torch", recompute=t.recompute, fp8=t.fp8)
    if t.init_from and saved is None:  # start from existing weights (ours, llm.c's or Hugging Face's)
        source, _ = load_any(t.init_from, cfg.model)
        checkpoint.check_shape(t.init_from, source.config, cfg.model)
        model.load_state_dict(source.state_dict())
    model.to(device)
    if use_kernels:
        optimizer = make_flat_optimizer(model, t, world)
    elif world.distributed:  # ZeRO-1 needs the flat layout; fp32 weights as the torch path keeps them
        optimizer = make_flat_optimizer(model, t, world, dtype=torch.float32)
    else:
        optimizer = make_optimizer(model, t, device)
    step = 0
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt_state = saved["optimizer"]  # saved by one process (torch AdamW) or several (ZeRO-1): convert
        if isinstance(optimizer, FlatAdamW) and "param_groups" in opt_state:
            opt_state = flat_state_from_torch(opt_state, ordered_params(model))
        elif not isinstance(optimizer, FlatAdamW) and "master" in opt_state:
            opt_state = torch_state_from_flat(opt_state, optimizer)
        optimizer.load_state_dict(opt_state)
        train_loader.load_state_dict(saved["loader"])
        set_rng_state(saved["rng"])
        step = saved["step"]
        for s in t.checkpoint_steps():
            if s <= step and world.main:
                paths.publish(s)
    elif world.main:
        for stale in list(paths.state.glob("model_*.pt")) + list(paths.out.glob("model_*.pt")):
            stale.unlink()
    distributed.barrier(world)
    runner = torch.compile(model) if t.ops == "compile" else model
    amp = torch.bfloat16 if use_kernels else autocast_dtype(device, t.dtype)
    ctx = contextlib.nullcontext() if use_kernels else autocast(device, amp)  # kernels: bf16 weights already
    log = Log(paths.state / "train.log", step if saved else None) if world.main else None
    progress = progress and world.main
    say = tqdm.write if world.main else (lambda *a, **k: None)
    if isinstance(optimizer, FlatAdamW) and world.distributed:
        say(f"ZeRO-1: {world.size} processes, rank {world.rank} holds optimizer state for "
            f"{optimizer.shard_size():,} of {optimizer.n:,} parameters")
    flops_per_step = model.flops_per_token(T) * t.total_batch_tokens
    peak = peak_flops(device)
    say(
        f"gpt2pipe train: {model.num_params() / 1e6:.2f}M parameters on {device} ({amp}), "
        f"{t.total_batch_tokens:,} tokens/step = {B}x{T} x {grad_accum} accumulation x {world.size} processes, "
        f"{t.max_steps} steps = {t.max_steps * t.total_batch_tokens / 1e9:.3f}B tokens"
        + (f", resuming at step {step}" if saved else "")
    )

    loss_outliers, norm_outliers = OutlierDetector(), OutlierDetector()
    if saved is not None and "outliers" in saved:
        loss_outliers.load_state_dict(saved["outliers"]["loss"])
        norm_outliers.load_state_dict(saved["outliers"]["norm"])

    state_step = [saved["step"] if saved else None]  # step of the state.pt this run wrote or resumed from

    def save_resume_state(step: int) -> None:
        opt_state = optimizer.state_dict()  # collective under ZeRO: every process gathers
        if world.main:
            keep_previous_states(paths.state, t.keep_states, state_step[0])
            state_step[0] = step
            checkpoint.save(paths.state / "state.pt", model, step, optimizer=opt_state,
                            loader=train_loader.state_dict(), rng=rng_state(), fingerprint=fingerprint,
                            tokens_seen=step * t.total_batch_tokens,
                            outliers={"loss": loss_outliers.state_dict(), "norm": norm_outliers.state_dict()})
            paths.publish_log()
        distributed.barrier(world)

    def save_state(step: int) -> None:
        if world.main:
            checkpoint.save(paths.snapshot(step), model, step, tokens_seen=step * t.total_batch_tokens)
            paths.publish(step)
        save_resume_state(step)

    checkpoints = set(t.checkpoint_steps())
    history: list[float] = []
    skipped_in_a_row = 0
    bar = tqdm(total=t.max_steps, initial=step, desc="train", unit="step", disable=not progress, dynamic_ncols=True)
    resumed_at = step if saved else None  # its val loss and checkpoint were written before the state
    with stop_signals() as stop:
        while True:
            last = step == t.max_steps
            if step != resumed_at and (last or (t.val_every and step % t.val_every == 0)):
                vl = val_loss(runner, val_loader, cfg.eval.val_tokens, device, ctx, world)
                if log:
                    log.write(f"s:{step} tel:{vl:.4f}")
                say(f"step {step:6d} | val loss {vl:.4f}")
            if step in checkpoints and step != resumed_at:
                save_state(step)
            if last:
                break
            if distributed.any_rank(bool(stop) or (step == _PREEMPT_AT and step != resumed_at), world, device):
                # preemption notice: everything up to this step is saved, so a requeue resumes exactly
                stop = stop or [signal.SIGTERM]
                if step != resumed_at:
                    save_resume_state(step)
                bar.close()
                raise Preempted(f"signal {stop[0]} at step {step}: state saved in {paths.state}, "
                                "rerun with --resume to continue")
            # --- one optimizer step ------------------------------------------------------------------
            t0 = time.perf_counter()
            runner.train()
            loss_sum = torch.zeros((), device=device)
            for k in range(grad_accum):
                if k == grad_accum - 1 and isinstance(optimizer, FlatAdamW):
                    optimizer.overlap_next_backward()  # reduce-scatter buckets as the backward completes them
                x, y = train_loader.next_batch()
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with ctx:
                    _, loss = runner(x, y)
                (loss / grad_accum).backward()
                loss_sum += loss.detach()
            lr = lr_at(step, t)
            norm_t = clip_gradients(optimizer, model, t.grad_clip)
            loss_mean = distributed.mean(loss_sum / grad_accum, world)
            train_loss, norm = loss_mean.item(), norm_t.item()  # one sync per step
            lossz, normz = loss_outliers.update(train_loss), norm_outliers.update(norm)
            skip = (not math.isfinite(train_loss) or not math.isfinite(norm)
                    or (t.skip_update_lossz > 0 and lossz > t.skip_update_lossz)
                    or (t.skip_update_gradz > 0 and normz > t.skip_update_gradz))
            if skip:  # llm.c's guard: a bad batch or a spike does not get to move the weights
                optimizer.zero_grad(set_to_none=True)
                skipped_in_a_row += 1
                say(f"step {step}: update skipped (loss {train_loss:.4f}, z {lossz:.1f}; grad norm {norm:.2f}, "
                           f"z {normz:.1f})")
                if skipped_in_a_row >= t.max_skipped_steps:
                    raise Gpt2pipeError(f"step {step}: {skipped_in_a_row} updates in a row skipped for a non-finite "
                                        f"or outlier loss/grad norm; stopping (last checkpoint in {paths.state})")
            else:
                apply_update(optimizer, lr)
                skipped_in_a_row = 0
            dt = time.perf_counter() - t0
            if log:
                log.write(f"s:{step} trl:{train_loss:.4f} lr:{lr:.6f} norm:{norm:.2f}" + (" skipped" if skip else ""))
            history.append(train_loss)
            tok_s = t.total_batch_tokens / dt
            mfu = f"{100 * flops_per_step / dt / peak:.1f}%" if peak else "-"
            bar.set_postfix_str(f"loss {train_loss:.4f} lr {lr:.2e} | {dt * 1e3:.0f} ms {tok_s:,.0f} tok/s mfu {mfu}")
            bar.update(1)
            step += 1
    bar.close()
    if log:
        log.f.close()
        paths.publish_log()
    distributed.barrier(world)
    return {"final_step": step, "train_losses": history}
