#!/usr/bin/env bash
# Build llm.c's train_gpt2cu WITH cuDNN attention, for `gpt2pipe bench --llmc` (without cuDNN, llm.c runs its
# own attention, which stores the T x T scores: ~40 GB at B=64 and far slower, a weak baseline).
# Needs cudnn-frontend's headers (header-only: the include/ folder of github NVIDIA/cudnn-frontend) at
# $CUDNN_FRONTEND (default .llmc/cudnn-frontend/include; v1.18.0 or older: from v1.19 its headers compile kernels
# through NVRTC and llm.c's Makefile does not link -lnvrtc -lcuda), and cuDNN itself, taken from the nvidia-cudnn wheel
# torch depends on (its headers and libcudnn.so.9). Writes $SRC/train_gpt2cu and a wrapper
# $SRC/train_gpt2cu.sh that puts that cuDNN on LD_LIBRARY_PATH: pass the wrapper to --llmc
# (dev/bench_step.sh picks it up). The cuDNN build compiles llm.c's cudnn_att.cpp: a few minutes.
# Usage (repo root, on the GPU machine): dev/build_llmc.sh [SRC, default .llmc/src]
set -euo pipefail
SRC=$(cd "${1:-.llmc/src}" && pwd)
FRONTEND=$(cd "${CUDNN_FRONTEND:-.llmc/cudnn-frontend/include}" && pwd)
PY=${PYTHON:-python}
CUDNN=$($PY -c 'import nvidia.cudnn as c; print(list(c.__path__)[0])')
[ -f "$FRONTEND/cudnn_frontend.h" ] || { echo "no cudnn_frontend.h in $FRONTEND" >&2; exit 1; }
[ -f "$CUDNN/include/cudnn.h" ] || { echo "no cudnn.h in $CUDNN/include" >&2; exit 1; }
LIB=$(mktemp -d)
ln -s "$(ls "$CUDNN"/lib/libcudnn.so.* | head -1)" "$LIB/libcudnn.so"  # the wheel ships only libcudnn.so.9
cd "$SRC"
# llm.c's Makefile insists on ./cudnn-frontend/include or ~/cudnn-frontend/include existing
[ -e cudnn-frontend/include ] || { mkdir -p cudnn-frontend && ln -s "$FRONTEND" cudnn-frontend/include; }
# CUDA 13's cudaMemAdvise takes a cudaMemLocation where llm.c (written against CUDA 12) passes cudaCpuDeviceId
if PATH=/usr/local/cuda/bin:$PATH nvcc --version | grep -Eq 'release (1[3-9]|[2-9][0-9])'; then
  sed -i 's/cudaMemAdviseSetPreferredLocation, cudaCpuDeviceId)/cudaMemAdviseSetPreferredLocation, cudaMemLocation{cudaMemLocationTypeHost, 0})/' \
    llmc/cuda_utils.cuh
fi
rm -f train_gpt2cu build/cudnn_att.o
PATH=/usr/local/cuda/bin:$PATH LIBRARY_PATH="$LIB:${LIBRARY_PATH:-}" make train_gpt2cu USE_CUDNN=1 \
  CUDNN_FRONTEND_PATH="$FRONTEND -I$CUDNN/include" NO_MULTI_GPU=1 NO_USE_MPI=1 GPU_COMPUTE_CAPABILITY=90
cat >train_gpt2cu.sh <<EOF
#!/bin/sh
LD_LIBRARY_PATH="$CUDNN/lib:\${LD_LIBRARY_PATH:-}" exec "$SRC/train_gpt2cu" "\$@"
EOF
chmod +x train_gpt2cu.sh
echo "built $SRC/train_gpt2cu with cuDNN; run it through $SRC/train_gpt2cu.sh"
