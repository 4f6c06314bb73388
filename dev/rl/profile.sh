#!/usr/bin/env bash
# Where the RL loop's time goes, on one H200, from the repo root (before optimising it): pre-train 124M as
# side_by_side.sh does -> the sampler's timings and kernels (--profile) -> one profiled GRPO step and one PPO
# step (dev/rl/profile_rl.py, the settings of the side-by-side runs) -> TRL's PPOTrainer for a few steps
# (dev/rl/trl_ppo.py, TRL 0.29.1 from .device/trl029/) -> the reward model with RM_SET's settings, no PPO.
set -uo pipefail
OUT=${OUT:-dev/rl/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .device/*.whl
python3 -m pip install -q --no-index --no-deps --target /tmp/site029 .device/trl029/*.whl
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
cfg=dev/rl/gpt2_124M_local.yaml
ck=results/rl124m/train/model_000200.pt
common="--no-progress --restart --set rl.prompts=/tmp/prompts.jsonl --set rl.steps=6 --set rl.checkpoint_every=1000"
set -x
python3 -m gpt2pipe corpus -c $cfg && python3 -m gpt2pipe tokenize -c $cfg
timeout 200 python3 -m gpt2pipe train -c $cfg --no-progress --restart 2>&1 | grep -E "step +(1|100|200)/|val|gpt2pipe|Error"
timeout 120 python3 dev/rl/sampler_bench.py $ck --profile 2>&1 | grep -v Warning
python3 dev/rl/trl_grpo.py prompts results/data/local_prose/shards /tmp/prompts.jsonl
PROFILE_STEP=4 timeout 80 python3 dev/rl/profile_rl.py -c $cfg --run-dir results/prof_grpo $common \
    --set rl.algorithm=grpo --set rl.learning_rate=1e-5 2>&1 | grep -v -i "warn"
PROFILE_STEP=4 timeout 80 python3 dev/rl/profile_rl.py -c $cfg --run-dir results/prof_ppo $common \
    --set rl.kl_target=null --set rl.grad_clip=0 --set rl.learning_rate=3e-5 2>&1 | grep -v -i "warn"
python3 -m gpt2pipe export --checkpoint $ck --format hf --out /tmp/hf
PYTHONPATH=/tmp/site029:$PYTHONPATH timeout 90 python3 dev/rl/trl_ppo.py /tmp/hf /tmp/prompts.jsonl "$OUT/trl_ppo_probe.tsv" \
    --steps 8 2>&1 | grep -E "^trl|Error|error" | tail -12
RM_ONLY=1 timeout 100 python3 dev/rl/reward_model_gpu.py $ck results/data/local_prose/shards "$OUT" 2>&1 | tail -3
