#!/usr/bin/env bash
# The 2-GPU check of issue 15, run once on a 2-GPU machine from the repo root (PYTHONPATH pointing at src/
# and any extra wheels; outputs under $OUT, default ./multi_gpu_out). Ends within 8 minutes whatever happens:
#   1. pytest tests/test_multi_gpu.py  (1 vs 2 GPU losses on kernels + kernels-fp8, SIGKILL, SIGTERM)   <= 210 s
#   2. gpt2pipe bench --nproc 2 --modes kernels,kernels-fp8,compile  (1-GPU baseline, then 2 GPUs)     <= 220 s
# Every command's output is tee'd to $OUT/; $OUT/summary.txt has each step's exit status.
# The bench rewrites its table after each mode, so a cut-short run keeps kernels and kernels-fp8.
set -u -o pipefail
OUT=${OUT:-$PWD/multi_gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python}
export PYTHONUNBUFFERED=1 GPT2PIPE_NCCL_TIMEOUT_S=${GPT2PIPE_NCCL_TIMEOUT_S:-120}
summary() { echo "$1: exit $2" | tee -a "$OUT/summary.txt"; }
: >"$OUT/summary.txt"

{ date -u; nvidia-smi --query-gpu=index,name,memory.total --format=csv; nvidia-smi topo -m;
  $PY -c 'import torch, gpt2pipe; print("torch", torch.__version__, "nccl", torch.cuda.nccl.version(),
"gpus", torch.cuda.device_count(), "gpt2pipe", gpt2pipe.__file__)'; } 2>&1 | tee "$OUT/env.txt"

# -k 10: a process that ignores the TERM is KILLed 10 s later; pytest's own children go with its group
timeout -k 10 210 $PY -m pytest -v -rs --durations=15 -p no:cacheprovider tests/test_multi_gpu.py tests/test_bench_multi.py \
  2>&1 | tee "$OUT/pytest_multi_gpu.txt"
summary "pytest tests/test_multi_gpu.py" $?

timeout -k 10 220 $PY -m gpt2pipe bench --nproc 2 --modes kernels,kernels-fp8,compile --steps 5 --warmup 2 \
  --no-kernel-table --out "$OUT/bench_2gpu.md" 2>&1 | tee "$OUT/bench_2gpu.log"
summary "gpt2pipe bench --nproc 2" $?

date -u | tee -a "$OUT/summary.txt"
