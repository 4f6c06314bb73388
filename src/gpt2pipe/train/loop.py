"""The training loop: set up (everything that can fail on bad input first), one optimizer step, and the loop
that validates, checkpoints, survives preemption and resumes exactly.

Files under the run folder:
  train/train.log, train/model_NNNNNN.pt   — the stage's outputs (snapshots are hard links into train_state/)
  train_state/state_NNNNNN.pt               — the newest full training states (state.py), for --resume
  train_state/model_NNNNNN.pt, train.log    — survive a failed job, whose outputs Snakemake deletes
  train_state/other/<digest>/               — the same, of earlier settings, set aside (aside.py)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from gpt2pipe import Gpt2pipeError, distributed
from gpt2pipe.config import Config, training_identity
from gpt2pipe.data.loader import ShardLoader
from gpt2pipe.data.prefetch import DeviceBatches
from gpt2pipe.data.llmc_format import ShardSet
from gpt2pipe.device import autocast, autocast_dtype, peak_flops, pick_device, seed_everything
from gpt2pipe.distributed import World
from gpt2pipe.eval.val import val_loss
from gpt2pipe.model.load import load_any
from gpt2pipe.files import atomic_path, count_text
from gpt2pipe.model import checkpoint
from gpt2pipe.model.gpt import GPT
from gpt2pipe.ops import kernels_available
from gpt2pipe.ops.fp8 import convert_to_fp8, has_fp8_gemms
from gpt2pipe.train.aside import keep_aside
from gpt2pipe.train.guards import Preempted, UpdateGuard, stop_signals
from gpt2pipe.train.logs import RunLog, check_sinks, say_for
from gpt2pipe.train.optim import build_optimizer, check_optimizer
from gpt2pipe.train.schedule import lr_at
from gpt2pipe.train.state import TrainState, check_resumable, newest_or_refuse, saved_states, settings_changed

# test seam: behave as if a preemption signal arrived at this step (GPT2PIPE_PREEMPT_AT_STEP=N)
_PREEMPT_AT = int(os.environ.get("GPT2PIPE_PREEMPT_AT_STEP", "-1"))


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

    log = "train.log"

    def publish_log(self) -> None:
        with atomic_path(self.out / self.log) as tmp:
            shutil.copyfile(self.state / self.log, tmp)

    def clear(self) -> None:
        """Start over: remove saved states, snapshots and logs of an earlier run in this folder."""
        for stale in [*saved_states(self.state), *self.state.glob("model_*.pt"), *self.out.glob("model_*.pt"),
                      self.state / "train.log"]:
            stale.unlink(missing_ok=True)


def train(cfg: Config, shards_dir: Path, run_dir: Path, resume: bool = False, restart: bool = False,
          progress: bool = True, retrain_on_change: bool = False) -> dict:
    """Train on one process, or as one of several (torchrun / srun): each reads its own part of every batch
    and the optimizer is ZeRO-sharded (train.zero); process 0 writes logs and checkpoints.

    resume: continue from the newest saved state in run_dir (a finished run only republishes its outputs);
    restart: discard any saved state and start from step 0. Without either, a folder holding a saved state
    is refused rather than overwritten. retrain_on_change (with resume): states saved under other settings are
    set aside and these settings train from step 0, or resume their own states kept aside (train/aside.py)."""
    device = pick_device(cfg.train.device)
    world = distributed.setup(device.type)
    try:
        trainer = Trainer.setup(cfg, Path(shards_dir), Path(run_dir), resume, restart, progress, world, device,
                                retrain_on_change)
        return trainer.run()
    finally:
        distributed.teardown(world)


@dataclass
class Trainer:
    cfg: Config
    world: World
    device: torch.device
    paths: RunPaths
    state: TrainState
    runner: torch.nn.Module       # the model as called (torch.compile'd with ops: compile)
    val_loader: ShardLoader
    ctx: contextlib.AbstractContextManager
    grad_accum: int
    log: RunLog
    resumed: bool

    @classmethod
    def setup(cls, cfg: Config, shards_dir: Path, run_dir: Path, resume: bool, restart: bool, progress: bool,
              world: World, device: torch.device, retrain_on_change: bool = False) -> Trainer:
        t = cfg.train
        # --- everything that can fail on bad input happens before the model exists ---------------------
        shards = ShardSet.open(shards_dir, vocab_size=cfg.model.vocab_size)
        check_sinks(t.log_to)
        if device.type == "cuda" and world.distributed:  # the node's GPU of this process (as distributed.setup)
            device = torch.device("cuda", distributed.cuda_index(world.local_rank, torch.cuda.device_count()))
        if t.num_threads:
            torch.set_num_threads(t.num_threads)
        B, T = t.micro_batch_size, t.seq_len
        if t.total_batch_tokens % (B * T * world.size):
            raise Gpt2pipeError(f"train.total_batch_tokens {t.total_batch_tokens} is not a multiple of micro_batch_size "
                                f"{B} x seq_len {T} x {world.size} processes = {B * T * world.size}")
        grad_accum = t.total_batch_tokens // (B * T * world.size)
        check_optimizer(t, world)
        say = say_for(world)
        train_loader = ShardLoader(shards.train, B, T, world.rank, world.size, shuffle=t.shuffle, seed=t.seed,
                                   vocab_size=cfg.model.vocab_size, log=say, document_aligned=t.document_aligned)
        val_loader = ShardLoader(shards.val, B, T, world.rank, world.size, vocab_size=cfg.model.vocab_size)
        paths = RunPaths.of(run_dir)
        identity = training_identity(cfg.raw)
        if retrain_on_change and resume and world.main:
            keep_aside(paths.state, paths.log, "train-state", lambda s: settings_changed(s, identity), say)
        distributed.barrier(world)
        saved = None if restart else newest_or_refuse(paths.state, say)
        found = distributed.gather_objects(None if saved is None else int(saved["step"]), world)
        if len(set(found)) > 1:  # e.g. nodes with a run folder each: resuming would train diverged replicas
            raise Gpt2pipeError(f"the processes found different saved states in {paths.state} (step per process, "
                                f"None = none: {found}): every node must see the run folder on one shared filesystem")
        if saved is not None:
            check_resumable(saved, cfg.model, identity)
            if not resume:
                raise Gpt2pipeError(f"{paths.state} holds a saved run at step {saved['step']}: pass --resume to "
                                    "continue it or --restart to start over")
        # --- model, optimizer, state --------------------------------------------------------------------
        use_kernels = t.ops == "kernels" and device.type == "cuda" and kernels_available()
        if t.ops == "kernels" and not use_kernels:
            say("train.ops is 'kernels' but no CUDA GPU with CuPy is available: running the torch reference path")
        seed_everything(t.seed)
        model = GPT(cfg.model, ops="kernels" if use_kernels else "torch", recompute=t.recompute)
        if t.init_from and saved is None:  # start from existing weights (ours, llm.c's or Hugging Face's)
            source, _ = load_any(t.init_from, cfg.model)
            checkpoint.check_shape(t.init_from, source.config, cfg.model)
            model.load_state_dict(source.state_dict())
        model.to(device)
        if t.fp8 and use_kernels:  # fp8 GEMMs exist on the kernels path only
            convert_to_fp8(model, t.fp8_gemms, t.fp8_gradients)
            if not has_fp8_gemms(device):  # the fp8 modules run bf16 there
                say(f"train.fp8: {torch.cuda.get_device_name(device)} has no fp8 GEMMs (sm_89 and newer have): "
                    "this run trains in bf16")
        elif t.fp8:
            say("train.fp8 needs train.ops: kernels on a CUDA GPU with CuPy: this run trains without fp8")
        optimizer = build_optimizer(model, t, world, device, use_kernels)
        state = TrainState(model, optimizer, DeviceBatches(train_loader, device), UpdateGuard(t), identity)
        if world.main:
            paths.out.mkdir(parents=True, exist_ok=True)
            paths.state.mkdir(parents=True, exist_ok=True)
            if saved is None:
                paths.clear()
        distributed.barrier(world)
        if saved is not None:
            state.restore(saved, world, say=say)
            if world.main:
                passed = [s for s in t.checkpoint_steps() if s <= state.step]
                missing = [s for s in passed if not paths.snapshot(s).exists()]
                for s in passed:
                    if s not in missing:
                        paths.publish(s)
                if missing:  # train.checkpoint_every changed after those steps were trained
                    say(f"no snapshot of steps {missing}: they were trained under another checkpoint_every")
        resumed = saved is not None
        del saved  # the memory-mapped file is not needed any more
        runner = torch.compile(model) if t.ops == "compile" else model
        amp = torch.bfloat16 if use_kernels else autocast_dtype(device, t.dtype)
        ctx = autocast(device, None if use_kernels else amp)  # kernels: bf16 weights already
        log = RunLog(paths.state / "train.log" if world.main else None, state.step if resumed else None,
                     t.max_steps, progress, t.log_to, run_dir, cfg.raw)
        if described := optimizer.describe():
            say(described)
        log.say(f"gpt2pipe train: {model.num_params() / 1e6:.2f}M parameters on {device} ({amp}), "
                f"{t.total_batch_tokens:,} tokens/step = {B}x{T} x {grad_accum} accumulation x {world.size} processes, "
                f"{t.max_steps} steps = {count_text(t.max_steps * t.total_batch_tokens)} tokens"
                + (f", resuming at step {state.step}" if resumed else ""))
        return cls(cfg, world, device, paths, state, runner, val_loader, ctx, grad_accum, log, resumed)

    # --- one optimizer step --------------------------------------------------------------------------------
    def train_step(self) -> tuple[float, float, float, bool]:
        """Forward/backward over the step's micro-batches, then the update unless the guard skips it.
        Returns (mean loss, pre-clip grad norm, lr, skipped)."""
        st, t = self.state, self.cfg.train
        self.runner.train()
        loss_sum = torch.zeros((), device=self.device)
        for k in range(self.grad_accum):
            if k == self.grad_accum - 1:
                st.optimizer.prepare_last_backward()
            x, y = st.loader.next_batch()
            with self.ctx:
                loss = self.runner(x, y)[1]  # the logits (B x T x V) are not kept alive into the next micro-batch
            (loss / self.grad_accum).backward()
            loss_sum += loss.detach()
            st.loader.prefetch()  # the next micro-batch (after the last: the next step's first) while the GPU works
        lr = lr_at(st.step, t)
        norm_t = st.optimizer.global_norm()
        loss_mean = distributed.mean(loss_sum / self.grad_accum, self.world)
        loss, norm = loss_mean.item(), norm_t.item()  # one sync per step
        skip, why = st.guard.check(st.step, loss, norm)
        if skip:  # llm.c's guard: a bad batch or a spike does not get to move the weights
            st.optimizer.discard()
            self.log.say(f"step {st.step}: {why}")
        else:
            st.optimizer.update(lr)
        return loss, norm, lr, skip

    def save_state(self, weights_of: Callable[[], dict | None] | None = None) -> None:
        """Collective. weights_of: how to get the model's weights (default: gather them now)."""
        t = self.cfg.train
        weights = (weights_of or self.state.optimizer.model_weights)()  # collective: ZeRO-3 gathers the model
        self.state.save(self.paths.state, self.world, t.total_batch_tokens, t.keep_states, weights)
        if self.world.main:
            self.paths.publish_log()
        distributed.barrier(self.world)

    def save_snapshot(self) -> None:
        step = self.state.step
        weights = self.state.optimizer.model_weights()  # collective: a ZeRO-3 model is gathered to process 0
        if self.world.main:
            checkpoint.save(self.paths.snapshot(step), self.state.model, step, weights=weights,
                            tokens_seen=step * self.cfg.train.total_batch_tokens)
            self.paths.publish(step)
        self.save_state(lambda: weights)  # the same weights: gathered once per checkpoint

    def finished(self) -> dict:
        """A run already at max_steps (its outputs deleted, e.g. after a later failure): republish them."""
        if self.world.main:
            self.paths.publish_log()
        self.log.say(f"run already finished at step {self.state.step}: outputs republished, nothing trained")
        self.log.close()
        return {"final_step": self.state.step, "train_losses": []}

    def run(self) -> dict:
        st, t, world = self.state, self.cfg.train, self.world
        if st.step >= t.max_steps:
            return self.finished()
        checkpoints = set(t.checkpoint_steps())
        flops_per_step = st.model.flops_per_token(t.seq_len) * t.total_batch_tokens
        peak = peak_flops(self.device)
        history: list[float] = []
        resumed_at = st.step if self.resumed else None  # its val loss and checkpoint were written before the state
        with stop_signals() as stop:
            while True:
                step = st.step
                last = step == t.max_steps
                if step != resumed_at and (last or (t.val_every and step % t.val_every == 0)):
                    self.log.val(step, val_loss(self.runner, self.val_loader, self.cfg.eval.val_tokens, self.device,
                                                self.ctx, world))
                if step in checkpoints and step != resumed_at:
                    self.save_snapshot()
                if last:
                    break
                if distributed.any_rank(bool(stop) or (step == _PREEMPT_AT and step != resumed_at), world, self.device):
                    # preemption notice: everything up to this step is saved, so a requeue resumes exactly
                    if step != resumed_at:
                        self.save_state()
                    self.log.close()
                    raise Preempted(f"signal {(stop or [signal.SIGTERM])[0]} at step {step}: state saved in "
                                    f"{self.paths.state}, rerun with --resume to continue")
                t0 = time.perf_counter()
                loss, norm, lr, skipped = self.train_step()
                dt = time.perf_counter() - t0
                mfu = flops_per_step / dt / (peak * world.size) if peak else None  # per GPU
                self.log.train_step(step, loss, lr, norm, skipped, dt * 1e3, t.total_batch_tokens / dt, mfu)
                history.append(loss)
                st.step += 1
        self.log.close()
        if world.main:
            self.paths.publish_log()
        distributed.barrier(world)
        return {"final_step": st.step, "train_losses": history}
