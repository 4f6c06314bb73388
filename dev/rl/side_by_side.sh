#!/usr/bin/env bash
# GRPO against TRL on one H200, from the repo root (wheels for vaderSentiment, TRL, datasets, dill and
# multiprocess travel in .device/; the machine has torch, transformers and accelerate):
#   GPU tests of rl -> pre-train 124M on the local corpus (200 steps x 131K tokens, as run_gpu.sh)
#   -> sampler speed against HF generate (+ one decode step's kernels) -> the same 2048 prompts as text
#   -> `gpt2pipe rl` GRPO and TRL's GRPOTrainer, $STEPS steps each, the settings of dev/rl/trl_grpo.py.
set -uo pipefail
OUT=${OUT:-dev/rl/out}; STEPS=${STEPS:-30}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .device/*.whl && export PYTHONPATH=/tmp/site:$PWD/src
export PYTHONUNBUFFERED=1
cfg=dev/rl/gpt2_124M_local.yaml
ck=results/rl124m/train/model_000200.pt
set -x
[ -n "${SKIP_TESTS:-}" ] || timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider -x ${TESTS:-tests/test_rl.py \
    tests/test_kernels.py tests/test_classifier_fp32.py tests/test_arch_ops.py} 2>&1 | tail -8
python3 -m gpt2pipe corpus -c $cfg && python3 -m gpt2pipe tokenize -c $cfg
timeout 200 python3 -m gpt2pipe train -c $cfg --no-progress --restart 2>&1 | grep -E "step +(1|100|200)/|val|gpt2pipe|Error"
[ -f $ck ] || timeout 200 python3 -m gpt2pipe train -c $cfg --no-progress --restart --set train.ops=torch 2>&1 | grep -E "step +(1|100|200)/|val|gpt2pipe|Error"
timeout 100 python3 dev/rl/sampler_bench.py $ck ${BENCH_ARGS:---profile}
python3 dev/rl/trl_grpo.py prompts results/data/local_prose/shards /tmp/prompts.jsonl
timeout 100 python3 -m gpt2pipe rl -c $cfg --no-progress --run-dir results/grpo_side --restart \
    --set rl.algorithm=grpo --set rl.prompts=/tmp/prompts.jsonl --set rl.learning_rate=1e-5 \
    --set rl.steps=$STEPS --set rl.checkpoint_every=1000
cp results/grpo_side/rl/rl.log "$OUT/ours_grpo.log"
# the reward-model path: pairs of the model's own continuations labelled by VADER -> reward model -> PPO
[ -z "${RM:-}" ] || timeout 240 python3 dev/rl/reward_model_gpu.py $ck results/data/local_prose/shards "$OUT" 2>&1 | tail -30
[ "${TRL_SECONDS:-150}" = 0 ] && exit 0
python3 -m gpt2pipe export --checkpoint $ck --format hf --out /tmp/hf
timeout ${TRL_SECONDS:-150} python3 dev/rl/trl_grpo.py trl /tmp/hf /tmp/prompts.jsonl "$OUT/trl_grpo.tsv" --steps $STEPS \
    2>&1 | grep -vi warn | tail -40
