#!/usr/bin/env bash
# Issue 24 item 2, the training loop's step against the bench's `kernels` step at the same shape, in one GPU
# call: ROUNDS rounds (default 2) of [bench kernels, then `gpt2pipe train` GPT-2 124M], so neither side gets
# only the cool GPU of the call's start; the GPU's SM clock, temperature and power before each round.
# From the repo root; $OUT/rN/summary.md per round (dev/speed/speed_table.sh parts 1-2), $OUT/gpu.txt.
#   OUT (./loop_vs_bench), ROUNDS, PYTHON, STEPS as speed_table.sh
set -u -o pipefail
OUT=${OUT:-$PWD/loop_vs_bench}
mkdir -p "$OUT"
for r in $(seq 1 "${ROUNDS:-2}"); do
  nvidia-smi --query-gpu=clocks.sm,temperature.gpu,power.draw --format=csv,noheader | sed "s/^/round $r: /" \
    | tee -a "$OUT/gpu.txt"
  OUT=$OUT/r$r SKIP=3,4 MODES=kernels PROFILE= RUNS=gpt2 BUDGET=${BUDGET:-150} bash dev/speed/speed_table.sh \
    >"$OUT/r$r.log" 2>&1
  grep -E "^\| (bench kernels|train gpt2)" "$OUT/r$r/summary.md" | sed "s/^/round $r: /"
done
