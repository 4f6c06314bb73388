#!/usr/bin/env bash
# The training-step benchmark on one GPU, in one call, from the repo root (PYTHONPATH pointing at src/ and any
# extra wheels; outputs under $OUT, default ./bench_out). Ends within $BUDGET seconds (default 570) whatever
# happens, each step under its own timeout:
#   1. build llm.c if LLMC_SRC is set and has no train_gpt2cu yet (USE_CUDNN=0 unless dev/build_llmc.sh ran)
#   2. pytest the GPU tests of the classifier's fp32 weight gradient and of the per-op table      <= 90 s
#   3. gpt2pipe bench --size $SIZE (default 124M), modes $MODES (default: kernels, kernels-fp8,
#      kernels-fp8-head, kernels-unfused, compile, [llmc], compile-max) + the per-op table     the rest
# The bench rewrites $OUT/bench.md after every mode, so a run cut short keeps every mode it finished
# (compile-max runs last, after the per-op table: max-autotune compiles longest). $OUT/summary.txt has
# each step's exit status.
#   DIAG=1: the compile baselines' diagnosis instead of step 3's modes (compile-padded, compile,
#           compile-sliced, compile-cudnn, compile-model; 3 timed steps after 1; no per-op table).
set -u -o pipefail
OUT=${OUT:-$PWD/bench_out}
mkdir -p "$OUT"
PY=${PYTHON:-python}
SIZE=${SIZE:-124M}
BUDGET=${BUDGET:-570}
export PYTHONUNBUFFERED=1
start=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - start))); }
summary() { echo "$1: exit $2 ($(($(date +%s) - start)) s in)" | tee -a "$OUT/summary.txt"; }
: >"$OUT/summary.txt"

{ date -u; nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
  $PY -c 'import torch, cupy, gpt2pipe; print("torch", torch.__version__, "cuda", torch.version.cuda, "cupy",
cupy.__version__, "gpt2pipe", gpt2pipe.__file__)'; } 2>&1 | tee "$OUT/env.txt"

LLMC_ARGS=()
if [ -n "${LLMC_SRC:-}" ]; then
  if [ ! -x "$LLMC_SRC/train_gpt2cu" ]; then
    (cd "$LLMC_SRC" && PATH=/usr/local/cuda/bin:$PATH timeout 240 make train_gpt2cu USE_CUDNN=0 NO_MULTI_GPU=1 \
      NO_USE_MPI=1 GPU_COMPUTE_CAPABILITY=90) >"$OUT/llmc_build.txt" 2>&1
    summary "build llm.c (USE_CUDNN=0)" $?
  fi
  [ -x "$LLMC_SRC/train_gpt2cu" ] && LLMC_ARGS=(--llmc "$LLMC_SRC/train_gpt2cu")
  [ -x "$LLMC_SRC/train_gpt2cu.sh" ] && LLMC_ARGS=(--llmc "$LLMC_SRC/train_gpt2cu.sh")  # dev/build_llmc.sh's
fi

timeout -k 10 90 $PY -m pytest -q -rs -p no:cacheprovider tests/test_classifier_fp32.py tests/test_bench_kernels.py \
  2>&1 | tee "$OUT/pytest_gpu.txt"
summary "pytest classifier fp32 + kernel table coverage" $?

if [ "${DIAG:-0}" = 1 ]; then
  MODES=${MODES:-compile-padded,compile,compile-sliced,compile-cudnn,compile-model}
  EXTRA=(--no-kernel-table --steps 3 --warmup 1)
else
  MODES=${MODES:-kernels,kernels-fp8,kernels-fp8-head,kernels-unfused,nanogpt,compile,compile-max}
  EXTRA=(--steps 5 --warmup 2)
fi
timeout -k 10 "$(left)" $PY -m gpt2pipe bench --size "$SIZE" --modes "$MODES" \
  "${LLMC_ARGS[@]}" "${EXTRA[@]}" --out "$OUT/bench.md" 2>&1 | tee "$OUT/bench.log"
summary "gpt2pipe bench --size $SIZE --modes $MODES ${LLMC_ARGS[*]}" $?
date -u | tee -a "$OUT/summary.txt"
