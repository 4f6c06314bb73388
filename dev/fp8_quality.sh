#!/usr/bin/env bash
# The fp8 loss study: the GPT-2 124M recipe for 100M tokens (763 steps of 131,072 tokens,
# dev/speedrun/gpt2_mix.yaml) in bf16 and with each fp8 GEMM choice, one run per GPU at a time, from the repo
# root on a GPU machine. Prints each run's val losses (llm.c's `tel:` lines, every 95 steps = 12.5M tokens).
#   DATA=<shard dir> [VARIANTS="bf16 mlp mlp,qkv head"] [SEEDS="42"] [GPUS=2] [OUT=./fp8_quality] dev/fp8_quality.sh
# DATA: e.g. results/data/local_docs/shards (dev/speedrun/local_docs.py; carry it to the GPU machine).
# A variant is "bf16" or a comma-separated train.fp8_gemms list, optionally with "/e4m3" or "/e5m2"
# (train.fp8_gradients, e.g. "mlp/e5m2"; without it, the default e4m3). docs/fp8.md's first table is one seed; single runs
# of one config spread by up to ~0.1 on the 15M-token corpus, so compare several seeds.
set -u -o pipefail
: "${DATA:?set DATA to a directory of llm.c-format shards (mix_train_*.bin, mix_val_*.bin)}"
VARIANTS=${VARIANTS:-bf16 mlp mlp,qkv head}
SEEDS=${SEEDS:-42}
GPUS=${GPUS:-2}
OUT=${OUT:-$PWD/fp8_quality}
mkdir -p "$OUT"
run() {  # gpu variant seed
  local gpu=$1 variant=${2%/*} seed=$3 name="${2//,/+}_s$3"
  name=${name//\//_}
  local args=(--set train.max_steps=763 --set train.warmup_steps=28 --set train.val_every=95 --set "train.seed=$seed")
  [ "$variant" != bf16 ] && args+=(--set train.fp8=true --set "train.fp8_gemms=[$variant]")
  [ "$2" != "$variant" ] && args+=(--set "train.fp8_gradients=${2#*/}")
  CUDA_VISIBLE_DEVICES=$gpu python3 -m gpt2pipe train -c dev/speedrun/gpt2_mix.yaml --shards "$DATA" \
    --run-dir "$OUT/$name" --restart --no-progress "${args[@]}" > "$OUT/$name.stdout" 2>&1
  echo "$name exit $?: $(grep 'tel:' "$OUT/$name/train/train.log" 2>/dev/null | tr '\n' ' ')"
}
jobs=()
for seed in $SEEDS; do for variant in $VARIANTS; do jobs+=("$variant $seed"); done; done
for ((i = 0; i < ${#jobs[@]}; i += GPUS)); do
  for ((g = 0; g < GPUS && i + g < ${#jobs[@]}; g++)); do
    run $g ${jobs[i + g]} &
  done
  wait
done
