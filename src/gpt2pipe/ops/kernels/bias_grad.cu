// Gradient of a matmul's bias: the column sums of dout [N, C] (bf16), as per-row-group partial sums
// partials[blockIdx.y * C + c] that the host adds in a fixed order (deterministic, unlike atomics).
// Each thread owns 8 consecutive columns (16-byte loads; C % 8 == 0) and strides rows by gridDim.y.
#include "common.cuh"

extern "C" __global__ void bias_grad(float* partials, const bf16* dout, int N, int C) {
    const int c = (blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (c >= C) return;
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (long long r = blockIdx.y; r < N; r += gridDim.y) {
        float g[8];
        load8(g, dout + r * C + c);
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[j] += g[j];
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) partials[(long long)blockIdx.y * C + c + j] = acc[j];
}
