// LayerNorm fused with the residual add that precedes it in a pre-LN transformer:
//   res_out = residual + x (rounded to bf16, as the residual stream is stored), out = LN(res_out) * w + b.
// Without a residual it is a plain LayerNorm of x. One warp per row; mean and rstd are kept for backward.
#include "fp8.cuh"

extern "C" __global__ void layernorm_forward(bf16* out, float* mean_out, float* rstd_out, bf16* res_out,
                                             const bf16* x, const bf16* residual, const bf16* w,
                                             const bf16* b, int N, int C, float eps) {
    const int warps = blockDim.x / 32, lane = threadIdx.x % 32;
    const long long row = (long long)blockIdx.x * warps + threadIdx.x / 32;
    if (row >= N) return;
    const bf16* xr = x + row * C;
    const bf16* src = xr;
    if (residual != nullptr) {
        const bf16* rr = residual + row * C;
        bf16* o = res_out + row * C;
        for (int c = lane; c < C; c += 32) o[c] = tobf(bf(rr[c]) + bf(xr[c]));
        __syncwarp();
        src = o;
    }
    float s = 0.0f;
    for (int c = lane; c < C; c += 32) s += bf(src[c]);
    const float mean = warp_sum(s) / C;
    float v = 0.0f;
    for (int c = lane; c < C; c += 32) {
        const float d = bf(src[c]) - mean;
        v += d * d;
    }
    const float rstd = rsqrtf(warp_sum(v) / C + eps);
    bf16* orow = out + row * C;
    for (int c = lane; c < C; c += 32) orow[c] = tobf((bf(src[c]) - mean) * rstd * bf(w[c]) + bf(b[c]));
    if (lane == 0) {
        mean_out[row] = mean;
        rstd_out[row] = rstd;
    }
}

// dx = dres + LN'(dout); per-block partial sums of dw (first C floats) and db (next C) go to
// partials[blockIdx.x * 2C ...], summed on the host side in a fixed order (deterministic).
// Dynamic shared memory: warps * 2C floats (each warp its own slice, reduced in warp order).
extern "C" __global__ void layernorm_backward(bf16* dx, float* partials, const bf16* dout, const bf16* dres,
                                              const bf16* inp, const float* mean, const float* rstd,
                                              const bf16* w, int N, int C) {
    extern __shared__ float acc[];
    const int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float* mine = acc + (long long)warp * 2 * C;
    for (int c = lane; c < 2 * C; c += 32) mine[c] = 0.0f;
    for (long long row = (long long)blockIdx.x * warps + warp; row < N; row += (long long)gridDim.x * warps) {
        const bf16* g = dout + row * C;
        const bf16* xr = inp + row * C;
        const float m = mean[row], r = rstd[row];
        float sum_d = 0.0f, sum_dx = 0.0f;
        for (int c = lane; c < C; c += 32) {
            const float xhat = (bf(xr[c]) - m) * r;
            const float d = bf(g[c]) * bf(w[c]);
            sum_d += d;
            sum_dx += d * xhat;
        }
        sum_d = warp_sum(sum_d) / C;
        sum_dx = warp_sum(sum_dx) / C;
        bf16* o = dx + row * C;
        const bf16* rr = dres ? dres + row * C : nullptr;
        for (int c = lane; c < C; c += 32) {
            const float xhat = (bf(xr[c]) - m) * r;
            const float gc = bf(g[c]);
            const float d = gc * bf(w[c]);
            float val = (d - sum_d - xhat * sum_dx) * r;
            if (rr) val += bf(rr[c]);
            o[c] = tobf(val);
            mine[c] += gc * xhat;
            mine[C + c] += gc;
        }
    }
    __syncthreads();
    float* part = partials + (long long)blockIdx.x * 2 * C;
    for (int c = threadIdx.x; c < 2 * C; c += blockDim.x) {
        float s = 0.0f;
        for (int k = 0; k < warps; ++k) s += acc[(long long)k * 2 * C + c];
        part[c] = s;
    }
}

// Vectorised versions for C % 8 == 0: 16-byte accesses and the row kept in registers, so each input is
// read from memory once. V = vectors of 8 per lane = ceil(C / 256) is a template parameter, so a row
// takes only the registers it needs (occupancy); extern "C" entry points exist for V = 1..8 (C <= 2048).
// Backward for V <= 3 (GPT-2 124M: C = 768) is capped at 80 registers: 6 blocks per SM instead of 4.
template <int V>
__device__ void ln_forward_vec(bf16* out, float* mean_out, float* rstd_out, bf16* res_out, const bf16* x,
                               const bf16* residual, const bf16* w, const bf16* b, int N, int C, float eps,
                               fp8* out8, float* inv_scale, float* amax_cur, const float* amax_prev) {
    // out8 != nullptr: also an e4m3 copy of out for an fp8 GEMM (delayed scaling, see fp8.cu)
    const float s8 = out8 != nullptr ? fp8_begin(amax_prev, E4M3_MAX, inv_scale) : 1.0f;
    float m8 = 0.0f;
    const int warps = blockDim.x / 32, lane = threadIdx.x % 32;
    const long long row = (long long)blockIdx.x * warps + threadIdx.x / 32;
    if (row >= N) return;
    float vals[V][8];
    float s = 0.0f;
#pragma unroll
    for (int k = 0; k < V; ++k) {
        const int c = (lane + 32 * k) * 8;
        if (c < C) {
            load8(vals[k], x + row * C + c);
            if (residual != nullptr) {
                float r8[8];
                load8(r8, residual + row * C + c);
#pragma unroll
                for (int j = 0; j < 8; ++j) vals[k][j] = bf(tobf(vals[k][j] + r8[j]));
                store8(res_out + row * C + c, vals[k]);
            }
#pragma unroll
            for (int j = 0; j < 8; ++j) s += vals[k][j];
        }
    }
    const float mean = warp_sum(s) / C;
    float var = 0.0f;
#pragma unroll
    for (int k = 0; k < V; ++k) {
        if ((lane + 32 * k) * 8 < C) {
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const float d = vals[k][j] - mean;
                var += d * d;
            }
        }
    }
    const float rstd = rsqrtf(warp_sum(var) / C + eps);
#pragma unroll
    for (int k = 0; k < V; ++k) {
        const int c = (lane + 32 * k) * 8;
        if (c < C) {
            float w8[8], b8[8], o8[8];
            load8(w8, w + c);
            load8(b8, b + c);
#pragma unroll
            for (int j = 0; j < 8; ++j) o8[j] = (vals[k][j] - mean) * rstd * w8[j] + b8[j];
            store8(out + row * C + c, o8);
            if (out8 != nullptr) {
#pragma unroll
                for (int j = 0; j < 8; ++j) m8 = fmaxf(m8, fabsf(o8[j]));
                store8_fp8<false>(out8 + row * C + c, o8, s8);
            }
        }
    }
    if (lane == 0) {
        mean_out[row] = mean;
        rstd_out[row] = rstd;
    }
    if (out8 != nullptr) amax_commit(amax_cur, m8);
}

// The per-warp dw/db accumulators are stored transposed (element j of vector v at j * nv + v), so the 32
// lanes of a warp, which own consecutive vectors, touch consecutive shared-memory words: no bank conflicts.
template <int V>
__device__ void ln_backward_vec(bf16* dx, float* partials, const bf16* dout, const bf16* dres, const bf16* inp,
                                const float* mean, const float* rstd, const bf16* w, int N, int C) {
    extern __shared__ float acc[];
    const int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int nv = C / 8;
    float* mine = acc + (long long)warp * 2 * C;
    for (int c = lane; c < 2 * C; c += 32) mine[c] = 0.0f;
    __syncwarp();
    for (long long row = (long long)blockIdx.x * warps + warp; row < N; row += (long long)gridDim.x * warps) {
        const float m = mean[row], r = rstd[row];
        float xhat[V][8], g[V][8];
        float sum_d = 0.0f, sum_dx = 0.0f;
#pragma unroll
        for (int k = 0; k < V; ++k) {
            const int c = (lane + 32 * k) * 8;
            if (c < C) {
                float w8[8];
                load8(xhat[k], inp + row * C + c);
                load8(g[k], dout + row * C + c);
                load8(w8, w + c);
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    xhat[k][j] = (xhat[k][j] - m) * r;
                    const float d = g[k][j] * w8[j];
                    sum_d += d;
                    sum_dx += d * xhat[k][j];
                }
            }
        }
        sum_d = warp_sum(sum_d) / C;
        sum_dx = warp_sum(sum_dx) / C;
#pragma unroll
        for (int k = 0; k < V; ++k) {
            const int v = lane + 32 * k, c = v * 8;
            if (c < C) {
                float w8[8], o8[8], r8[8];
                load8(w8, w + c);
                if (dres) load8(r8, dres + row * C + c);
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    o8[j] = (g[k][j] * w8[j] - sum_d - xhat[k][j] * sum_dx) * r + (dres ? r8[j] : 0.0f);
                    mine[j * nv + v] += g[k][j] * xhat[k][j];
                    mine[C + j * nv + v] += g[k][j];
                }
                store8(dx + row * C + c, o8);
            }
        }
    }
    __syncthreads();
    float* part = partials + (long long)blockIdx.x * 2 * C;
    for (int c = threadIdx.x; c < 2 * C; c += blockDim.x) {
        const int half = c < C ? 0 : C, cc = c - half;  // column cc = v * 8 + j lives at j * nv + v
        const int at = half + (cc % 8) * nv + cc / 8;
        float s = 0.0f;
        for (int k = 0; k < warps; ++k) s += acc[(long long)k * 2 * C + at];
        part[c] = s;
    }
}

#define LN_VEC_ENTRY(V)                                                                                        \
    extern "C" __global__ void layernorm_forward_vec##V(bf16* out, float* mean, float* rstd, bf16* res_out,   \
                                                        const bf16* x, const bf16* residual, const bf16* w,    \
                                                        const bf16* b, int N, int C, float eps, fp8* out8,     \
                                                        float* inv_scale, float* amax_cur, const float* amax_prev) { \
        ln_forward_vec<V>(out, mean, rstd, res_out, x, residual, w, b, N, C, eps, out8, inv_scale, amax_cur,   \
                          amax_prev);                                                                          \
    }                                                                                                          \
    extern "C" __global__ void __launch_bounds__(128, (V <= 3 ? 6 : 2)) layernorm_backward_vec##V(bf16* dx, float* partials, const bf16* dout,         \
                                                         const bf16* dres, const bf16* inp, const float* mean, \
                                                         const float* rstd, const bf16* w, int N, int C) {     \
        ln_backward_vec<V>(dx, partials, dout, dres, inp, mean, rstd, w, N, C);                                \
    }

LN_VEC_ENTRY(1)
LN_VEC_ENTRY(2)
LN_VEC_ENTRY(3)
LN_VEC_ENTRY(4)
LN_VEC_ENTRY(5)
LN_VEC_ENTRY(6)
LN_VEC_ENTRY(7)
LN_VEC_ENTRY(8)
