#!/usr/bin/env bash
# Issue 23's GPU check in one call on one H200, from the repo root (the GPU machine has torch, CuPy and
# transformers, no registry: vaderSentiment travels as a wheel in .device/, with the HellaSwag prose of the
# corpus; PYTHONPATH points at src/). Writes logs and results under $OUT (default: dev/rl/out).
#   GPU tests of this change -> pre-train 124M on the local corpus (200 steps x 131K tokens)
#   -> PPO with the sentiment reward for at most $RL_SECONDS s (SIGTERM saves the state) -> GRPO for at most
#   $GRPO_SECONDS s -> sampler speed. SKIP_TESTS / SKIP_BENCH leave those parts out.
set -uo pipefail
OUT=${OUT:-dev/rl/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .device/*.whl && export PYTHONPATH=/tmp/site:$PWD/src
export PYTHONUNBUFFERED=1
cfg=dev/rl/gpt2_124M_local.yaml
set -x
nvidia-smi -L
[ -n "${SKIP_TESTS:-}" ] || timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_rl.py \
    tests/test_kernels.py::test_recompute_through_the_training_loop 2>&1 | tail -25
python3 -m gpt2pipe corpus -c $cfg && python3 -m gpt2pipe tokenize -c $cfg
timeout 200 python3 -m gpt2pipe train -c $cfg --no-progress --restart 2>&1 | grep -E "step +(1|50|100|150|199|200)[/ ]|val|gpt2pipe"
timeout "${RL_SECONDS:-240}" python3 -m gpt2pipe rl -c $cfg --no-progress ${RL_ARGS:-}
cp results/rl124m/rl/rl.log "$OUT"/
python3 -c "import glob, json; print(json.dumps([json.load(open(f)) for f in sorted(glob.glob('results/rl124m/rl/eval_*.json'))]))" > "$OUT/evals.json"
cat results/rl124m/rl/samples_000000.txt > "$OUT/samples.txt"; ls results/rl124m/rl/samples_*.txt | tail -1 | xargs cat >> "$OUT/samples.txt"
# GRPO on the same model, prompts and reward, for at most $GRPO_SECONDS s (0: not run)
if [ "${GRPO_SECONDS:-0}" -gt 0 ]; then
    timeout "$GRPO_SECONDS" python3 -m gpt2pipe rl -c $cfg --no-progress --run-dir results/rl124m_grpo --restart \
        --set rl.algorithm=grpo --set rl.checkpoint_every=20
    cp results/rl124m_grpo/rl/rl.log "$OUT/grpo_rl.log"
    python3 -c "import glob, json; print(json.dumps([json.load(open(f)) for f in sorted(glob.glob('results/rl124m_grpo/rl/eval_*.json'))]))" > "$OUT/grpo_evals.json"
fi
[ -n "${SKIP_BENCH:-}" ] || timeout 120 python3 dev/rl/sampler_bench.py results/rl124m/train/model_000200.pt
