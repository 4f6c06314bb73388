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
from gpt2pipe.model import checkpoint
from gpt2pipe.train.loop import RunPaths
from gpt2pipe.train.state import saved_states

# rl keys that change how a run goes, not what it computes: a run resumes across changes to them
NOT_IDENTITY = {"checkpoint_every", "forward_batch", "eval_prompts", "steps"}  # steps: a finished run extends


def identity(rl_raw: dict, init: str, model_raw: dict) -> dict:
    return {"rl": {k: v for k, v in rl_raw.items() if k not in NOT_IDENTITY}, "init": str(init),
            "model": digest(model_raw)}


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


def check_resumable(saved: dict, ident: dict) -> None:
    diff = sorted(k for k in set(saved.get("identity", {}).get("rl", {})) | set(ident["rl"])
                  if saved["identity"]["rl"].get(k) != ident["rl"].get(k))
    if saved.get("identity", {}).get("init") != ident["init"]:
        diff.append(f"init {saved['identity'].get('init')} -> {ident['init']}")
    if saved.get("identity", {}).get("model") != ident["model"]:
        diff.append("model")
    if diff:
        raise Gpt2pipeError(f"{saved['path']}: saved by an RL run with other settings ({', '.join(diff)}): restore "
                            "them to resume, or pass --restart to start over")
