#!/usr/bin/env bash
# gpt2pipe's RL against TRL on one H200, from the repo root; one device call per PART (each pre-trains the
# 124M model on the local corpus first: 200 steps x 131K tokens; ~100 s). Wheels travel in .device/
# (vaderSentiment, TRL 1.16 + datasets, dill, multiprocess for GRPO; .device/trl029/ TRL 0.29.1 for PPO); the
# machine has torch, transformers and accelerate.
#   PART=grpo: the sampler against HF generate -> the same prompts as text -> `gpt2pipe rl` GRPO and TRL's
#              GRPOTrainer, $STEPS steps each (dev/rl/trl_grpo.py's settings) -> reward-model variants
#              ($RM_VARIANTS: JSON objects separated by ';', trained side by side, no PPO)
#   PART=ppo:  `gpt2pipe rl` PPO and TRL's PPOTrainer, $STEPS steps each (dev/rl/trl_ppo.py's
#              settings) -> the reward-model path with $RM_SET (reward model, PPO against it, VADER held out)
#   PART=both: the GRPO and PPO comparisons alone (TRL's GRPO for $TRL_GRPO_STEPS steps: its speed)
#   PART=profile: where the time goes: the sampler's kernels (--profile), then one profiled GRPO step and one
#              PPO step with the settings above (dev/rl/profile_rl.py)
# Every part first runs the GPU tests of rl and reward-model (SKIP_TESTS=1: none; TESTS=...: those).
set -uo pipefail
OUT=${OUT:-dev/rl/out}; STEPS=${STEPS:-30}; PART=${PART:-grpo}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .device/*.whl
python3 -m pip install -q --no-index --no-deps --target /tmp/site029 .device/trl029/*.whl
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
cfg=dev/rl/gpt2_124M_local.yaml
ck=results/rl124m/train/model_000200.pt
shards=results/data/local_prose/shards
set -x
[ -n "${SKIP_TESTS:-}" ] || timeout ${TEST_SECONDS:-100} python3 -m pytest -q -m gpu -p no:cacheprovider \
    ${TESTS:-tests/test_rl.py tests/test_reward_model.py} 2>&1 | tail -4
python3 -m gpt2pipe corpus -c $cfg && python3 -m gpt2pipe tokenize -c $cfg
timeout 200 python3 -m gpt2pipe train -c $cfg --no-progress --restart 2>&1 | grep -E "step +(1|100|200)/|val|gpt2pipe|Error"
[ -f $ck ] || timeout 200 python3 -m gpt2pipe train -c $cfg --no-progress --restart --set train.ops=torch 2>&1 | grep -E "step +(1|100|200)/|val|gpt2pipe|Error"
python3 dev/rl/trl_grpo.py prompts $shards /tmp/prompts.jsonl
python3 -m gpt2pipe export --checkpoint $ck --format hf --out /tmp/hf
opts="--no-progress --restart --set rl.prompts=/tmp/prompts.jsonl --set rl.checkpoint_every=1000"
ours="python3 -m gpt2pipe rl -c $cfg $opts --set rl.steps=$STEPS"
grpo_side() {  # ours, then TRL's GRPOTrainer for $TRL_GRPO_STEPS steps (its speed; the curves need $STEPS)
    timeout 100 $ours --run-dir results/grpo_side --set rl.algorithm=grpo --set rl.learning_rate=1e-5
    cp results/grpo_side/rl/rl.log "$OUT/ours_grpo.log"
    timeout 150 python3 dev/rl/trl_grpo.py trl /tmp/hf /tmp/prompts.jsonl "$OUT/trl_grpo.tsv" \
        --steps ${TRL_GRPO_STEPS:-$STEPS} 2>&1 | grep -E "^trl|Error" | tail -40
}
ppo_side() {
    timeout 120 $ours --run-dir results/ppo_side --set rl.kl_target=null --set rl.grad_clip=0 --set rl.learning_rate=3e-5
    cp results/ppo_side/rl/rl.log "$OUT/ours_ppo.log"
    PYTHONPATH=/tmp/site029:$PYTHONPATH timeout ${TRL_SECONDS:-220} python3 dev/rl/trl_ppo.py /tmp/hf /tmp/prompts.jsonl \
        "$OUT/trl_ppo.tsv" --steps $STEPS 2>&1 | grep -E "Error" | tail -20  # its rows: trl_ppo.tsv
}
if [ "$PART" = profile ]; then
    timeout 150 python3 dev/rl/sampler_bench.py $ck --profile 2>&1 | grep -v -i warn
    prof="python3 dev/rl/profile_rl.py -c $cfg $opts --set rl.steps=6"  # the profiled step: 4 (PROFILE_STEP)
    timeout 80 $prof --run-dir results/prof_grpo \
        --set rl.algorithm=grpo --set rl.learning_rate=1e-5 2>&1 | grep -v -i warn
    timeout 80 $prof --run-dir results/prof_ppo \
        --set rl.kl_target=null --set rl.grad_clip=0 --set rl.learning_rate=3e-5 2>&1 | grep -v -i warn
elif [ "$PART" = both ]; then
    grpo_side
    ppo_side
elif [ "$PART" = grpo ]; then
    timeout 150 python3 dev/rl/sampler_bench.py $ck ${BENCH_ARGS:---profile} 2>&1 | grep -v -i warn
    grpo_side
    IFS=';' read -ra variants <<< "${RM_VARIANTS:-}"
    for i in "${!variants[@]}"; do  # side by side on the one GPU: their speed is not measured here
        RM_ONLY=1 RM_RUN=rm_v$i RM_SET="${variants[$i]}" timeout 240 python3 dev/rl/reward_model_gpu.py $ck $shards \
            "$OUT/rm_v$i" > "$OUT/rm_v$i.log" 2>&1 &
    done
    wait
    for i in "${!variants[@]}"; do tail -1 "$OUT/rm_v$i.log"; done
else
    ppo_side
    [ -z "${RM_SET:-}" ] || RM_SET="$RM_SET" timeout 240 python3 dev/rl/reward_model_gpu.py $ck $shards "$OUT" 2>&1 | tail -6
fi
