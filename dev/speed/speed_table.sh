#!/usr/bin/env bash
# Issue 24's speed table in one GPU call (one H200, no internet), from the repo root; everything under $OUT
# (default ./speed_out), done within $BUDGET s (default 570) whatever happens. Parts in order of importance,
# each under its own timeout, so a call cut short keeps the answers that matter most:
#   1. bench at 124M: kernels, kernels-fp8, nanogpt, compile (nanogpt and compile each profiled for one step:
#      the kernel tables say where compile's extra time goes)                                  ~200 s
#   2. `gpt2pipe train` (ops kernels, B=64 x 8 = 524,288 tokens/step) on random-token shards: the GPT-2 model
#      (vs bench's kernels step) and config/speedrun.yaml's model with Muon, 15 steps each        ~2 x 50 s
#   3. dev/speed/profile_step.py: one profiled training step of each of the two models            ~60 s
#   4. with time left: bench compile-padded (nanoGPT's loss on our model: splits compile vs nanogpt
#      into loss vs model+optimizer)                                                                ~90 s
# $OUT/summary.md: every step time against the fastest baseline of the run; $OUT/status.txt: exit codes.
#   STEPS=15 (training steps per run), PYTHON=python, SKIP=1,3 (parts to leave out, for a rerun), MODES, PROFILE and
#   RUNS (below: fewer bench modes or loops, or gpt2-bgrad too; dev/speed/loop_vs_bench.sh alternates bench and
#   loop this way),
#   SET='--set model.n_layer=2 ...' (more overrides for parts 2-3: the CPU test's tiny models),
#   LLMC=path/to/train_gpt2cu.sh (dev/build_llmc.sh's wrapper: llm.c joins part 1 as a baseline)
set -u -o pipefail
OUT=${OUT:-$PWD/speed_out}
BUDGET=${BUDGET:-570}
PY=${PYTHON:-python}
STEPS=${STEPS:-15}
SKIP=,${SKIP:-},
MODES=${MODES:-kernels,kernels-fp8,nanogpt,compile}       # part 1's bench modes
PROFILE=${PROFILE-nanogpt,compile}                        # ... of which profiled ('' for none)
RUNS=${RUNS:-gpt2,speedrun-unfused,speedrun}              # part 2's loops (speedrun-unfused only with UNFUSED=1)
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
start=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - start))); }
# a part's timeout: its own estimate with room, never past what the budget has left (minus 15 s for summary)
cap() { local l=$(($(left) - 15)); echo $(( $1 < l ? $1 : (l > 1 ? l : 1) )); }
status() { echo "$1: exit $2 ($(($(date +%s) - start)) s in)" | tee -a "$OUT/status.txt"; }
want() { [[ $SKIP != *,$1,* ]]; }
: >"$OUT/status.txt"

{ date -u; nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv; git log -1 --format='%H %s'
  $PY -c 'import torch, cupy; print("torch", torch.__version__, "cuda", torch.version.cuda, "cupy", cupy.__version__)'
} 2>&1 | tee "$OUT/env.txt"

# --- 1. the bench's modes in one process; bench.md is rewritten after each mode, so a timeout keeps those done
if want 1; then
  timeout -k 10 "$(cap 260)" $PY -m gpt2pipe bench --size 124M --modes "$MODES" \
    ${PROFILE:+--profile "$PROFILE"} ${LLMC:+--llmc "$LLMC"} --no-kernel-table --steps 5 --warmup 2 --out "$OUT/bench.md" 2>&1 | tee "$OUT/bench.log"
  status "1 bench $MODES" $?
fi

# --- 2. the real loop. Random tokens (timing does not depend on the text) with <|endoftext|> every ~600 tokens,
# so the speedrun's document-aligned rows find documents as in real data
SH=$OUT/shards
if (want 2 || want 3) && [ ! -f "$SH/rand_train_000001.bin" ]; then
  $PY - "$SH" <<'EOF'
import sys, numpy as np
from pathlib import Path
from gpt2pipe.data.llmc_format import write_shard
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
for name, n in (("rand_val_000000.bin", 1 << 20), ("rand_train_000001.bin", 24 << 20)):
    t = rng.integers(0, 50256, n, dtype=np.uint16)
    starts = np.cumsum(rng.integers(100, 1100, n // 100))
    t[starts[starts < n]] = 50256  # document starts
    t[0] = 50256
    write_shard(out / name, t)
EOF
  status "2 random shards" $?
fi
# a line for every step (without a progress bar the CLI prints steps 1-3 and every 10th only); no val until
# the last step, one checkpoint at the end: nothing but training steps between the step lines
TRAIN=(-c "import sys, gpt2pipe.train.logs as l; l.PRINT_EVERY = 1; from gpt2pipe.cli import main; sys.exit(main())")
LOOP=(--shards "$SH" --restart --no-progress --set train.ops=kernels --set train.max_steps="$STEPS"
      --set train.val_every=0 --set train.checkpoint_every=100000 --set eval.val_tokens=65536
      --set train.micro_batch_size=64 --set train.total_batch_tokens=524288 --set train.seq_len=1024 ${SET:-})
# loops with one of ops.FUSIONS switched from its default: speedrun-unfused (UNFUSED=1: relu2_epilogue off,
# cuBLAS + our relu2 kernels) and gpt2-bgrad (RUNS=gpt2,gpt2-bgrad: bias gradients in the dW GEMMs)
switched() { echo "import sys, gpt2pipe.train.logs as l; l.PRINT_EVERY = 1; from gpt2pipe.ops import FUSIONS
FUSIONS.update($1); from gpt2pipe.cli import main; sys.exit(main())"; }
if want 2; then
  for run in gpt2:config/gpt2-124M.yaml gpt2-bgrad:config/gpt2-124M.yaml \
      ${UNFUSED:+speedrun-unfused:config/speedrun.yaml} speedrun:config/speedrun.yaml; do
    name=${run%%:*}
    [[ ,$RUNS, == *,$name,* ]] || continue
    case $name in
      speedrun-unfused) py=(-c "$(switched relu2_epilogue=False)") ;;
      gpt2-bgrad) py=(-c "$(switched bgrad_epilogue=True)") ;;
      *) py=("${TRAIN[@]}") ;;
    esac
    timeout -k 10 "$(cap 110)" $PY "${py[@]}" train -c "${run#*:}" --run-dir "$OUT/runs/$name" "${LOOP[@]}" \
      2>&1 | tee "$OUT/train_$name.log"
    status "2 train $name (ops kernels, $STEPS steps)" $?
  done
fi

# --- 3. one profiled step of each model, set up as `gpt2pipe train` sets it up
if want 3; then
  timeout -k 10 "$(cap 150)" $PY dev/speed/profile_step.py --shards "$SH" --run-dir "$OUT/runs/profile" \
    --set train.ops=kernels --set train.max_steps=1000 --set train.micro_batch_size=64 \
    --set train.total_batch_tokens=524288 --set train.seq_len=1024 ${SET:-} \
    gpt2=config/gpt2-124M.yaml speedrun=config/speedrun.yaml 2>&1 | tee "$OUT/profile.md"
  status "3 profile_step gpt2 vs speedrun" $?
fi
rm -rf "$OUT/runs" "$SH"  # checkpoints, states and shards: GBs nobody needs back

# --- 4. diagnosis of compile vs nanogpt, only with room for a compile (~60 s) and its steps
if want 4 && [ "$(left)" -gt 120 ]; then
  timeout -k 10 "$(cap 200)" $PY -m gpt2pipe bench --size 124M --modes compile-padded --no-kernel-table \
    --steps 5 --warmup 2 --out "$OUT/bench_diag.md" 2>&1 | tee "$OUT/bench_diag.log"
  status "4 bench compile-padded" $?
fi

$PY dev/speed/summarize.py "$OUT" --skip 3 2>&1 | tee "$OUT/summary.md"
status "summary" $?
