"""What an RL run saves, where, and what it resumes from.

  <run>/rl/model_NNNNNN.pt, rl.log, eval_NNNNNN.json, samples_NNNNNN.txt   the stage's outputs
  <run>/rl_state/state_NNNNNN.pt, model_NNNNNN.pt, rl.log                  what --resume needs (kept when a
                                                                           failed job's outputs are deleted)

A state holds the optimizers' whole states (fp32 master weights and moments: the weights come back from them
on any ops path and process count), the KL coefficient and the step; sampling, prompt order and mini-batch
order follow from (rl.seed, step), on any number of processes, so nothing else is needed for an exact resume
(on another process count: within fp32 summation order).
"""

from __future__ import annotations

from pathlib import Path

from gpt2pipe import Gpt2pipeError
from gpt2pipe.config import digest
from gpt2pipe.files import content_digest
from gpt2pipe.model import checkpoint
from gpt2pipe.train.loop import RunPaths
from gpt2pipe.train.state import saved_states

# the identity's digest of the reward model RL scores with or starts its value model from (rl/loop.py adds it)
RM_WEIGHTS = "reward_model_weights"
# rl keys that change how a run goes, not what it computes: a run resumes across changes to them
NOT_IDENTITY = {"checkpoint_every", "forward_batch", "eval_prompts", "steps"}  # steps: a finished run extends


def identity(rl_raw: dict, init: str, model_raw: dict) -> dict:
    """What decides the RL run, with a digest of the starting weights: a retrained run's final checkpoint has
    the same path and shape, and RL from it must not resume a state trained from the earlier weights."""
    return {"rl": {k: v for k, v in rl_raw.items() if k not in NOT_IDENTITY}, "init": str(init),
            "model": digest(model_raw), "weights": content_digest(init)}


class RLPaths(RunPaths):
    """train's folders and publishing (snapshots hard-linked into the outputs), for rl/ and rl_state/."""

    log = "rl.log"

    @classmethod
    def of(cls, run_dir: Path) -> RLPaths:
        return cls(Path(run_dir) / "rl", Path(run_dir) / "rl_state")

    def clear(self) -> None:
        for stale in [*saved_states(self.state), *self.state.glob("model_*.pt"), *self.out.glob("*_*.pt"),
                      *self.out.glob("eval_*.json"), *self.out.glob("samples_*.txt"), self.state / "rl.log"]:
            stale.unlink(missing_ok=True)


def save(paths: RLPaths, policy, step: int, weights: dict, kl_coef: float, opt_policy: dict,
         opt_value: dict | None, ident: dict, keep: int = 2) -> None:
    checkpoint.save(paths.state / f"state_{step:06d}.pt", policy, step, weights=weights, kind="rl-state",
                    opt_policy=opt_policy, opt_value=opt_value, kl_coef=kl_coef, identity=ident)
    for old in saved_states(paths.state)[keep:]:
        old.unlink()


def differences(saved: dict, ident: dict) -> list[str]:
    """What differs between a saved RL state and this run (empty: it resumes). A state saved before the
    starting weights' digest was recorded is taken at its word on them."""
    old = saved.get("identity", {})
    keys = set(old.get("rl", {})) | set(ident["rl"])
    diff = sorted(f"rl.{k}" for k in keys - {RM_WEIGHTS} if old.get("rl", {}).get(k) != ident["rl"].get(k))
    if old.get("rl", {}).get(RM_WEIGHTS) != ident["rl"].get(RM_WEIGHTS):  # the loop adds it (a reward model)
        both = RM_WEIGHTS in old.get("rl", {}) and RM_WEIGHTS in ident["rl"]
        diff.append("the reward model's weights (retrained)" if both else "the reward model")
    if old.get("init") != ident["init"]:
        diff.append(f"init {old.get('init')} -> {ident['init']}")
    if old.get("model") != ident["model"]:
        diff.append("model")
    if old.get("weights", ident["weights"]) != ident["weights"]:
        diff.append(f"the weights of {ident['init']} (retrained)")
    return diff


def check_resumable(saved: dict, ident: dict) -> None:
    if diff := differences(saved, ident):
        raise Gpt2pipeError(f"{saved['path']}: saved by an RL run with other settings ({', '.join(diff)}): restore "
                            "them to resume it, set another run_name to run these beside it, or pass --restart to "
                            "delete it and start over")
