"""Issue 23's reward-model check on one GPU, in ~3 minutes on an H200: a reward model trained on pairs of the
pre-trained 124M model's own continuations labelled by VADER (chosen = the more positive) must reach >= 0.85
held-out pair accuracy, and PPO against that reward model must raise the VADER score of held-out responses.

    PYTHONPATH=src python3 dev/rl/reward_model_gpu.py [CHECKPOINT [SHARDS [OUT]]]

CHECKPOINT: the pre-trained model (default results/rl124m/train/model_000200.pt, what dev/rl/run_gpu.sh
trains); SHARDS: its shard folder (default results/data/local_prose/shards), whose val shard gives the
prompts. Needs torch and PyYAML only (no snakemake, datasets or jsonschema: the config's defaults are filled
from the schema here, without validation); vaderSentiment is installed from .device/*.whl if missing.
Writes results/rm124m/ and OUT/summary.json (default dev/rl/out). RM_SMOKE=1 runs the same code path with
small numbers on a CPU (any small pre-trained checkpoint and its shards), to check the script, not the model.
"""

from __future__ import annotations

import glob
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml


# The reward model: the stage's defaults (64 pairs of the 124M model's own continuations of each of its val
# shard's ~1,350 document starts, ties and VADER differences under 0.2 dropped, one epoch at 1e-4 in batches of
# 64; ~10 s sampling, ~60 s training on an H200), on 32-token prefixes and 24-token continuations. Then PPO as
# dev/rl/gpt2_124M_local.yaml's sentiment run, the reward model scoring and starting the value model.
RM = {"pairs": "sentiment", "num_prompts": 4096, "prompt_tokens": 32, "response_tokens": 24, "temperature": 0.7,
      "eval_pairs": 512, "forward_batch": 64, "max_tokens": 64}
RL = {"reward": "reward_model", "value_from_reward_model": True, "steps": 40, "checkpoint_every": 20,
      "eval_prompts": 256}
SMOKE = bool(int(__import__("os").environ.get("RM_SMOKE", "0")))
# RM_SET='{"pairs_per_prompt": 32}' changes the reward model's settings; RM_ONLY=1 stops after it (no PPO)
RM.update(json.loads(__import__("os").environ.get("RM_SET", "{}")))
RM_ONLY = bool(int(__import__("os").environ.get("RM_ONLY", "0")))


def ensure_vader() -> None:
    try:
        import vaderSentiment  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target",
                        "/tmp/site", *glob.glob(".device/vaderSentiment*.whl")], check=True)
        sys.path.insert(0, "/tmp/site")


def filled(raw: dict) -> dict:
    """raw with every schema default filled in (what validation adds), without jsonschema."""
    from gpt2pipe.schema import schema

    def fill(node: dict, values: dict) -> dict:
        out = dict(values)
        for name, sub in node.get("properties", {}).items():
            if name not in out and "default" in sub:
                out[name] = sub["default"]
            if sub.get("type") == "object" and isinstance(out.get(name), dict):
                out[name] = fill(sub, out[name])
        return out

    return fill(schema(), raw)


def main() -> None:
    ensure_vader()
    from gpt2pipe import config
    from gpt2pipe.config import loading as config_loading
    from gpt2pipe.device import autocast, autocast_dtype
    from gpt2pipe.model.load import load_any
    from gpt2pipe.rl import evaluate, rewards
    from gpt2pipe.rl.loop import load_prompts, run as rl_run
    from gpt2pipe.rl.policy import frozen_copy
    from gpt2pipe.reward_model.train import run as rm_run

    ckpt = Path(sys.argv[1] if len(sys.argv) > 1 else "results/rl124m/train/model_000200.pt")
    shards = Path(sys.argv[2] if len(sys.argv) > 2 else "results/data/local_prose/shards")
    out = Path(sys.argv[3] if len(sys.argv) > 3 else "dev/rl/out")
    out.mkdir(parents=True, exist_ok=True)
    name = __import__("os").environ.get("RM_RUN", "rm124m")  # variants side by side: one folder each
    run_dir = Path("results") / name
    raw = yaml.safe_load((Path(__file__).parent / "gpt2_124M_local.yaml").read_text())
    raw["run_name"] = name
    raw["train"]["ops"] = "kernels"
    raw["reward_model"] = {"init_from": str(ckpt), **RM}
    raw["rl"].update(init_from=str(ckpt), reward_model=str(run_dir / "reward_model" / "model.pt"), **RL)
    if SMOKE:  # the code path on a CPU with a tiny model (e.g. the workflow test's): small numbers throughout
        raw["train"].update(ops="torch", device="cpu")
        raw["reward_model"].update(num_prompts=64, pairs_per_prompt=2, prompt_tokens=4, response_tokens=8, margin=0.0,
                                   eval_pairs=8, epochs=1, batch_size=8, forward_batch=8, max_tokens=16)
        raw["rl"].update(steps=2, checkpoint_every=2, eval_prompts=4, batch_size=8, mini_batch_size=8, forward_batch=8,
                         prompt_tokens=4, max_new_tokens=8, num_prompts=32)
    cfg = config_loading._config(filled(raw))
    summary = {"checkpoint": str(ckpt)}
    t0 = time.perf_counter()
    rm = rm_run(cfg, run_dir, shards, progress=False)
    summary["reward_model"] = {k: rm[k] for k in ("held_out", "before", "train_pairs", "steps", "normalisation")}
    summary["reward_model"]["seconds"] = time.perf_counter() - t0
    print(json.dumps(summary["reward_model"]), flush=True)
    if RM_ONLY:
        acc, last = summary["reward_model"]["held_out"], rm["history"][-50:]
        fit = sum(r["accuracy"] for r in last) / len(last)  # train accuracy at the end: under- or over-fitting
        print(f"reward model {json.dumps(RM)}: held-out pair accuracy {acc['accuracy']:.4f} ± {acc['ci95']:.4f} "
              f"over {acc['n']} pairs; training batches' accuracy over the last 50 steps {fit:.4f}", flush=True)
        return

    t0 = time.perf_counter()
    rl = rl_run(cfg, run_dir, shards, restart=True, progress=False)
    summary["rl_seconds"] = time.perf_counter() - t0
    summary["rl_reward_model_score"] = {s: json.loads((run_dir / "rl" / f"eval_{s:06d}.json").read_text())["reward"]
                                        for s in (0, rl["final_step"])}

    # VADER, the labeller itself, on the held-out prompts: the pre-trained policy against the final one
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    _, held = load_prompts(cfg, shards)
    vader = rewards.build("sentiment")
    ctx = autocast(device, autocast_dtype(device))
    ref = frozen_copy(load_any(ckpt)[0].to(device))
    scored = {}
    for step, path in ((0, ckpt), (rl["final_step"], run_dir / "rl" / f"model_{rl['final_step']:06d}.pt")):
        policy = load_any(path)[0].to(device).eval()
        rl_cfg = type(cfg.rl)(**{**cfg.rl.__dict__, "reward": "sentiment"})
        r = evaluate.held_out(policy, ref, held, rl_cfg, vader, ctx, step, out / "vader", cfg.rl.seed + 1)
        scored[step] = {"vader": r["reward"], "kl": r["kl"]}
    summary["vader_held_out"] = scored
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    acc = summary["reward_model"]["held_out"]
    v0, v1 = scored[0]["vader"], scored[rl["final_step"]]["vader"]
    print(f"reward model: held-out pair accuracy {acc['accuracy']:.4f} ± {acc['ci95']:.4f} over {acc['n']} pairs "
          f"({'>=' if acc['accuracy'] >= 0.85 else '<'} 0.85)\n"
          f"PPO against it, {rl['final_step']} steps: held-out VADER {v0['mean']:.4f} ± {v0['ci95']:.4f} -> "
          f"{v1['mean']:.4f} ± {v1['ci95']:.4f}, KL {scored[rl['final_step']]['kl']['mean']:.2f} nats", flush=True)


if __name__ == "__main__":
    main()
