"""The RL stage: set up (every input checked before any model exists), then steps of collect -> optimise ->
log, with checkpoints scored on held-out prompts, saved states, and an exact resume after a kill or a
preemption signal. One process, or one of several (torchrun / srun): each samples its own share of every
batch, the experience is gathered, and each optimises on its share of every mini-batch (shard.py), so a run's
result does not depend on the number of processes (within fp32 summation order)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from gpt2pipe import Gpt2pipeError, distributed, layout
from gpt2pipe.config import Config
from gpt2pipe.data.llmc_format import ShardSet, read_shard
from gpt2pipe.device import autocast, autocast_dtype, pick_device, seed_everything
from gpt2pipe.model import checkpoint
from gpt2pipe.model.decode import sampling_copy
from gpt2pipe.model.gpt import GPT
from gpt2pipe.model.load import load_any
from gpt2pipe.ops import kernels_available
from gpt2pipe.data.tokenizer import EOT
from gpt2pipe.rl import evaluate, losses, prompts as prompts_mod, rewards, shard, state as rl_state, update
from gpt2pipe.rl.policy import frozen_copy, value_model_from
from gpt2pipe.rl.rollout import collect, shape_rewards
from gpt2pipe.train.aside import keep_aside
from gpt2pipe.train.guards import Preempted, stop_signals
from gpt2pipe.train.logs import say_for
from gpt2pipe.train.optim import build_optimizer
from gpt2pipe.train.state import newest_or_refuse

COLUMNS = ["step", "reward_mean", "reward_std", "kl", "kl_coef", "entropy", "policy_loss", "value_loss",
           "policy_clipfrac", "value_clipfrac", "approxkl", "response_length", "rollout_s", "update_s",
           "samples_per_s"]


def default_init(cfg: Config) -> Path:
    """The run's final checkpoint: what RL starts from unless rl.init_from says otherwise."""
    return layout.checkpoint(cfg.raw, cfg.train.max_steps)


def reward_model_path(cfg: Config, run_dir: Path) -> Path:
    """The reward model of rl.reward reward_model / rl.value_from_reward_model: rl.reward_model, else the run's
    (<run_dir>/reward_model/model.pt, where `gpt2pipe reward-model` writes it)."""
    return Path(cfg.rl.reward_model) if cfg.rl.reward_model else Path(run_dir) / "reward_model" / "model.pt"


def load_prompts(cfg: Config, shards_dir: Path | None) -> tuple[list[list[int]], list[list[int]]]:
    rl = cfg.rl
    if rl.prompts:
        all_prompts = prompts_mod.from_file(rl.prompts, rl.prompt_tokens + 1)
    else:
        shards = ShardSet.open(shards_dir or layout.shard_dir(cfg.raw), vocab_size=cfg.model.vocab_size)
        all_prompts = prompts_mod.from_shard(read_shard(shards.val[0]), rl.num_prompts, rl.prompt_tokens, rl.seed,
                                             str(shards.val[0]))
    return prompts_mod.split(all_prompts, rl.eval_prompts)


def run(cfg: Config, run_dir: Path, shards_dir: Path | None = None, resume: bool = False, restart: bool = False,
        progress: bool = True, retrain_on_change: bool = False) -> dict:
    if cfg.rl is None:
        raise Gpt2pipeError("the config has no rl section: add `rl: {}` (see `gpt2pipe config --describe`)")
    rl = cfg.rl
    # --- inputs first: reward function, prompts, the starting model, saved states -------------------------
    reward_fn = rewards.build(rl.reward, reward_model_path(cfg, run_dir))
    train_prompts, eval_prompts = load_prompts(cfg, shards_dir)
    init = Path(rl.init_from) if rl.init_from else default_init(cfg)
    if not init.exists():
        raise Gpt2pipeError(f"{init}: no model to start RL from (train the run first, or set rl.init_from)")
    value_rm = None  # rl.value_from_reward_model: the reward model the value model starts from
    if rl.value_from_reward_model and rl.algorithm == "ppo":
        from gpt2pipe.reward_model.model import Scorer

        value_rm = (reward_fn if isinstance(reward_fn, Scorer) else Scorer(reward_model_path(cfg, run_dir))).model
    device = pick_device(cfg.train.device)
    world = distributed.setup(device.type)
    try:
        shard.check(rl, world)
        if device.type == "cuda" and world.distributed:
            device = torch.device("cuda", distributed.cuda_index(world.local_rank, torch.cuda.device_count()))
        if hasattr(reward_fn, "to"):  # a reward model runs where the policy does
            reward_fn = reward_fn.to(device)
        return _Run(cfg, world, device, run_dir, init, reward_fn, train_prompts, eval_prompts, resume, restart,
                    progress, value_rm, retrain_on_change).loop()
    finally:
        distributed.teardown(world)


class _Run:
    def __init__(self, cfg, world, device, run_dir, init, reward_fn, train_prompts, eval_prompts, resume, restart,
                 progress, value_rm=None, retrain_on_change=False):
        rl, t = cfg.rl, cfg.train
        self.cfg, self.rl, self.world, self.device, self.reward_fn = cfg, rl, world, device, reward_fn
        self.train_prompts, self.eval_prompts, self.progress = train_prompts, eval_prompts, progress
        self.say = say_for(world)
        self.paths = rl_state.RLPaths.of(run_dir)
        source, _ = load_any(init)
        self.ident = rl_state.identity(cfg.raw["rl"], init, dataclasses.asdict(source.config))
        rm = getattr(reward_fn, "model", None) if cfg.rl.reward == "reward_model" else value_rm
        if rm is not None:  # a retrained reward model is another run, though its path is the same
            from gpt2pipe.reward_model.model import fingerprint

            self.ident["rl"][rl_state.RM_WEIGHTS] = fingerprint(rm)
        # after the reward model's digest joined the identity: a state trained against a retrained reward model
        # is set aside too (and comes back when that reward model does)
        if retrain_on_change and resume and world.main:  # other settings' states kept aside (train/aside.py)
            keep_aside(self.paths.state, self.paths.log, "rl-state", lambda s: rl_state.differences(s, self.ident),
                       self.say)
        distributed.barrier(world)
        saved = None if restart else newest_or_refuse(self.paths.state, self.say, kind="rl-state")
        if saved is not None:
            rl_state.check_resumable(saved, self.ident)
            if not resume:
                raise Gpt2pipeError(f"{self.paths.state} holds an RL run at step {saved['step']}: pass --resume to "
                                    "continue it or --restart to start over")
        use_kernels = t.ops == "kernels" and device.type == "cuda" and kernels_available()
        if t.ops == "kernels" and not use_kernels:
            self.say("train.ops is 'kernels' but no CUDA GPU with CuPy is available: RL runs the torch path")
        seed_everything(rl.seed)
        self.policy = GPT(source.config, ops="kernels" if use_kernels else "torch")
        self.policy.load_state_dict(source.state_dict())
        self.policy.to(device)
        self.ref = frozen_copy(self.policy).to(torch.bfloat16 if use_kernels else torch.float32)
        self.value = None
        if rl.algorithm == "ppo":
            self.value = value_model_from(self.policy, value_rm).to(device)
        opt_cfg = dataclasses.replace(t, learning_rate=rl.learning_rate, eps=rl.adam_eps, weight_decay=rl.weight_decay,
                                      grad_clip=rl.grad_clip, optimizer="adamw", zero=min(t.zero, 2))
        self.opt_policy = build_optimizer(self.policy, opt_cfg, world, device, use_kernels)
        self.opt_value = build_optimizer(self.value, opt_cfg, world, device, use_kernels) if self.value else None
        self.kl = (losses.AdaptiveKL(rl.kl_coef, rl.kl_target, rl.kl_horizon) if rl.kl_target
                   else losses.FixedKL(rl.kl_coef))
        self.ctx = autocast(device, None if use_kernels else autocast_dtype(device, t.dtype))
        self.update = update.Updater(rl, self.policy, self.value, [o for o in (self.opt_policy, self.opt_value) if o],
                                     self.ctx, device, world)
        self.step, self.sampler = 0, None
        if world.main:
            self.paths.out.mkdir(parents=True, exist_ok=True)
            self.paths.state.mkdir(parents=True, exist_ok=True)
            if saved is None:
                self.paths.clear()
        distributed.barrier(world)
        if saved is not None:
            self.opt_policy.load_whole_state(saved["opt_policy"], weights_from_master=True)
            if self.opt_value:
                self.opt_value.load_whole_state(saved["opt_value"], weights_from_master=True)
            self.kl.value, self.step = float(saved["kl_coef"]), int(saved["step"])
            if world.main:  # outputs a failed job lost (Snakemake deletes them) come back from rl_state/
                for s in rl.checkpoint_steps():
                    if s <= self.step and self.paths.snapshot(s).exists():
                        self.paths.publish(s)
        self.resumed_at = self.step if saved is not None else None
        self.say(f"gpt2pipe rl: {rl.algorithm} from {init} ({self.policy.num_params() / 1e6:.2f}M parameters, "
                 f"{'kernels' if use_kernels else 'torch'} path on {device}), reward {rl.reward}, "
                 f"{len(train_prompts)} prompts (+{len(eval_prompts)} held out), {rl.steps} steps of {rl.batch_size}"
                 + (f", resuming at step {self.step}" if saved is not None else ""))

    # --- the whole batch over processes ---------------------------------------------------------------------
    def step_prompts(self, step: int) -> list[list[int]]:
        """The whole batch's prompts of the step (GRPO: grpo_group_size consecutive copies of each)."""
        rl = self.rl
        k = rl.grpo_group_size if rl.algorithm == "grpo" else 1
        batch = prompts_mod.batch_of(self.train_prompts, step, rl.batch_size // k, rl.seed)
        return [p for p in batch for _ in range(k)]

    def generator(self, step: int, device=None) -> torch.Generator:
        """The step's random stream, the same on every process (sampling noise of the whole batch on the model's
        device; mini-batch order on the CPU). Seeded as process 0's stream was when each process drew its own,
        so runs of one process sample and shuffle as they did."""
        return torch.Generator(device or self.device).manual_seed(hash((self.rl.seed, step, 0)) % 2**63)

    # --- one step ------------------------------------------------------------------------------------------
    def rl_step(self, step: int) -> dict:
        rl = self.rl
        t0 = time.perf_counter()
        gen = self.generator(step)
        self.policy.eval()
        self.sampler = sampling_copy(self.policy, self.sampler)
        prompts = self.step_prompts(step)
        rows = shard.share(len(prompts), self.world)
        exp = collect(self.policy, self.ref, prompts[rows], rl, self.reward_fn, gen, self.ctx, rl.forward_batch,
                      self.sampler, self.value, rows=rows, global_batch=len(prompts))
        # from here on every process holds the whole batch: whitening, groups and statistics see all of it
        exp = shard.gather(exp, len(prompts), EOT, self.world)
        rewards, kl = shape_rewards(exp, self.kl.value)
        if rl.algorithm == "ppo":
            if rl.whiten_rewards:
                rewards = losses.masked_whiten(rewards, exp.mask, shift_mean=False)
            adv, exp.returns = losses.gae(rewards, exp.values, exp.mask, rl.gamma, rl.lam)
            exp.advantages = losses.masked_whiten(adv, exp.mask)
        else:
            exp.advantages = losses.group_advantages(exp.scores, rl.grpo_group_size)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t1 = time.perf_counter()
        self.policy.train()
        order = self.generator(step, "cpu")
        stats = self.update(exp, order, rl.learning_rate)
        n = torch.tensor(float(len(exp.scores)))
        sums = torch.stack([exp.scores.sum(), (exp.scores ** 2).sum(), kl.sum(), exp.mask.sum()]).cpu()
        mean = sums[0] / n
        stats = {k: v.item() for k, v in stats.items()}
        t2 = time.perf_counter()
        row = {"step": step, "reward_mean": mean.item(), "reward_std": (sums[1] / n - mean ** 2).clamp(min=0).sqrt().item(),
               "kl": (sums[2] / n).item(), "kl_coef": self.kl.value, "entropy": stats.get("objective/entropy", 0.0),
               "policy_loss": stats.get("loss/policy_avg", 0.0), "value_loss": stats.get("loss/value_avg", 0.0),
               "policy_clipfrac": stats.get("policy/clipfrac_avg", 0.0), "value_clipfrac": stats.get("val/clipfrac_avg", 0.0),
               "approxkl": stats.get("policy/approxkl_avg", 0.0), "response_length": (sums[3] / n).item(),
               "rollout_s": t1 - t0, "update_s": t2 - t1, "samples_per_s": n.item() / (t2 - t0)}
        self.kl.update(row["kl"], rl.batch_size)
        return row

    # --- files ----------------------------------------------------------------------------------------------
    def log_row(self, row: dict) -> None:
        if not self.world.main:
            return
        log = self.paths.state / "rl.log"
        if not log.exists():
            log.write_text("\t".join(COLUMNS) + "\n")
        with log.open("a") as f:
            f.write("\t".join(f"{row[c]:.6g}" if isinstance(row[c], float) else str(row[c]) for c in COLUMNS) + "\n")

    def truncate_log(self, step: int) -> None:
        """A resumed run drops the lines of steps after its state (written before the stop): none twice."""
        log = self.paths.state / "rl.log"
        if self.world.main and log.exists():
            lines = log.read_text().splitlines(keepends=True)
            log.write_text("".join(lines[:1] + [ln for ln in lines[1:] if int(ln.split("\t")[0]) < step]))

    def save_state(self, snapshot: bool) -> None:
        """Collective: the optimizers gather their shards on process 0."""
        weights = self.opt_policy.model_weights()
        opt_p = self.opt_policy.whole_state()
        opt_v = self.opt_value.whole_state() if self.opt_value else None
        if self.world.main:
            if snapshot:
                checkpoint.save(self.paths.snapshot(self.step), self.policy, self.step, weights=weights, rl_step=self.step)
                self.paths.publish(self.step)
            rl_state.save(self.paths, self.policy, self.step, weights, self.kl.value, opt_p, opt_v, self.ident)
            self.paths.publish_log()
        distributed.barrier(self.world)

    def evaluate(self, step: int, model: GPT | None = None) -> None:
        """The held-out results of `step`, of the policy (or of `model`: the reference, for step 0)."""
        if self.world.main and self.eval_prompts:
            if model is None:
                self.policy.eval()
                model = self.policy
                self.sampler = sampler = sampling_copy(self.policy, self.sampler)
            else:
                sampler = sampling_copy(model)
            r = evaluate.held_out(model, self.ref, self.eval_prompts, self.rl, self.reward_fn, self.ctx, step,
                                  self.paths.out, self.rl.seed + 1, sampler)
            self.say(f"rl step {step}: held-out reward {r['reward']['mean']:.4f} ± {r['reward']['ci95']:.4f}, "
                     f"KL {r['kl']['mean']:.3f} ± {r['kl']['ci95']:.3f} ({r['reward']['n']} prompts)")
        distributed.barrier(self.world)

    def remake_held_out(self) -> None:
        """A resumed run makes again the held-out results the workflow declares that are missing (Snakemake
        deletes a job's outputs before it reruns it): step 0's from the reference (the starting weights,
        frozen), the resumed step's from the policy, with the same prompts and seeded draws."""
        def missing(step: int) -> bool:  # process 0 writes them, and decides for all (each waits on a barrier)
            gone = self.world.main and not all((self.paths.out / f"{kind}_{step:06d}.{ext}").exists()
                                               for kind, ext in (("eval", "json"), ("samples", "txt")))
            return distributed.any_rank(gone, self.world, self.device)

        if missing(0):
            self.evaluate(0, model=self.ref)
        if self.step in self.rl.checkpoint_steps() and missing(self.step):
            self.evaluate(self.step)

    def loop(self) -> dict:
        rl = self.rl
        checkpoints = set(rl.checkpoint_steps())
        if self.resumed_at is None:
            self.evaluate(0)  # the pre-trained model's level, for the curve and the report
        else:
            self.truncate_log(self.step)
            self.remake_held_out()
        from gpt2pipe.progress import tqdm

        bar = tqdm(total=rl.steps, initial=self.step, disable=not (self.progress and self.world.main), desc="rl",
                   unit="step", dynamic_ncols=True)
        history = []
        with stop_signals() as stop:
            while self.step < rl.steps:
                if distributed.any_rank(bool(stop), self.world, self.device):
                    if self.step != self.resumed_at:
                        self.save_state(snapshot=False)
                    raise Preempted(f"signal {stop[0] if stop else '?'} at RL step {self.step}: state saved in "
                                    f"{self.paths.state}, rerun with --resume to continue")
                row = self.rl_step(self.step)
                self.log_row(row)
                history.append(row)
                self.step += 1
                bar.update(1)
                bar.set_postfix(reward=f"{row['reward_mean']:.3f}", kl=f"{row['kl']:.2f}")
                if self.step in checkpoints:
                    self.save_state(snapshot=True)
                    self.evaluate(self.step)
        bar.close()
        if self.world.main and (self.paths.state / "rl.log").exists():
            self.paths.publish_log()
        return {"final_step": self.step, "history": history}
