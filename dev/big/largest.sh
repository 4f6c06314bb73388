#!/usr/bin/env bash
# The largest GPT-2/GPT-3-shaped model that trains on one H200 on each path (ops kernels / torch), with and
# without train.recompute: `gpt2pipe train` itself, a few optimizer steps of 16K tokens (B sequences x 1024,
# accumulated to 16,384 tokens), killed (-9, so no 80 GB state is written) once it has logged steps.
# Peak GPU memory is nvidia-smi's, polled. Usage, from the repo root on the GPU machine, after a corpus is
# tokenized (dev/rl/gpt2_124M_local.yaml's): dev/big/largest.sh "NAME OPS RECOMPUTE B LAYERS EMBD HEADS" ...
# Shapes: GPT-2 1558M = 48 1600 25; GPT-3 2.7B = 32 2560 32; 6.7B = 32 4096 32; 13B = 40 5120 40.
set -uo pipefail
OUT=${OUT:-dev/big/out}; mkdir -p "$OUT"
cfg=dev/rl/gpt2_124M_local.yaml
for probe in "$@"; do
    read -r name ops rc B L E H <<<"$probe"
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$OUT/mem_$name.txt" &
    poll=$!
    timeout -s KILL "${PROBE_SECONDS:-100}" python3 -m gpt2pipe train -c $cfg --no-progress --restart \
        --run-dir "results/big_$name" --set train.ops=$ops --set train.recompute=$rc \
        --set train.micro_batch_size=$B --set train.total_batch_tokens=16384 --set train.max_steps=1000 \
        --set train.val_every=100000 --set train.checkpoint_every=100000 --set model.n_layer=$L \
        --set model.n_embd=$E --set model.n_head=$H > "$OUT/train_$name.txt" 2>&1
    rc_=$?
    kill $poll
    peak=$(sort -n "$OUT/mem_$name.txt" | tail -1)
    last=$(grep -E "^step|ms .*tok/s" "$OUT/train_$name.txt" | tail -1)
    err=$(grep -iE "out of memory|error" "$OUT/train_$name.txt" | tail -1 | cut -c1-160)
    echo "| $name | $ops | $rc | $B | ${L}x${E} | rc $rc_ | peak ${peak} MiB | $last | $err"
done
