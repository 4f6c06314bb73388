// Global L2 norm of the gradient and the clipping factor, without a host sync.
// Pass 1: per-block partial sums of squares. Pass 2 (one block): sums the partials in a fixed order and
// writes out[0] = norm, out[1] = min(1, max_norm / (norm + 1e-6)) (torch's clip_grad_norm_ rule;
// max_norm <= 0 disables clipping).
#include "common.cuh"

extern "C" __global__ void global_norm_partial(float* partials, const bf16* g, long long n) {
    float s = 0.0f;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const float x = bf(g[i]);
        s += x * x;
    }
    s = block_sum(s);
    if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

extern "C" __global__ void global_norm_finalize(float* out, const float* partials, int count, float max_norm) {
    float s = 0.0f;
    for (int i = threadIdx.x; i < count; i += blockDim.x) s += partials[i];
    s = block_sum(s);
    if (threadIdx.x == 0) {
        const float norm = sqrtf(s);
        out[0] = norm;
        out[1] = (max_norm > 0.0f) ? fminf(1.0f, max_norm / (norm + 1e-6f)) : 1.0f;
    }
}
