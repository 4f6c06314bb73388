// Bias + GELU (tanh approximation), the MLP's activation after its first matmul.
// Forward: out = gelu(h + bias). Backward: dh = dout * gelu'(h + bias) and per-row-block partial sums of
// dbias (partials[blockIdx.y * C + c]), summed on the host side in a fixed order.
// Grid: x over column tiles of blockDim.x, y over row groups (each thread strides rows by gridDim.y).
#include "fp8.cuh"

#define GELU_K 0.7978845608028654f  // sqrt(2 / pi)

__device__ __forceinline__ float gelu(float x) {
    const float u = GELU_K * (x + 0.044715f * x * x * x);
    return 0.5f * x * (1.0f + tanhf(u));
}

__device__ __forceinline__ float gelu_grad(float x) {
    const float u = GELU_K * (x + 0.044715f * x * x * x);
    const float t = tanhf(u);
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * GELU_K * (1.0f + 3.0f * 0.044715f * x * x);
}

extern "C" __global__ void bias_gelu_forward(bf16* out, const bf16* h, const bf16* bias, int N, int C) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    const float b = bf(bias[c]);
    for (long long r = blockIdx.y; r < N; r += gridDim.y) {
        const float x = bf(tobf(bf(h[r * C + c]) + b));  // round like the bf16 add it replaces
        out[r * C + c] = tobf(gelu(x));
    }
}

extern "C" __global__ void bias_gelu_backward(bf16* dh, float* partials, const bf16* dout, const bf16* h,
                                              const bf16* bias, int N, int C) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    const float b = bf(bias[c]);
    float db = 0.0f;
    for (long long r = blockIdx.y; r < N; r += gridDim.y) {
        const float x = bf(tobf(bf(h[r * C + c]) + b));
        const float d = bf(dout[r * C + c]) * gelu_grad(x);
        const bf16 dr = tobf(d);
        dh[r * C + c] = dr;
        db += bf(dr);
    }
    partials[(long long)blockIdx.y * C + c] = db;
}

// Vectorised versions for C % 8 == 0: each thread owns 8 consecutive columns (16-byte accesses).
// With F8, each also writes an fp8 copy of its output for the next GEMM (e4m3 forward; the gradient in e5m2,
// or e4m3 with G_E5M2 false: train.fp8_gradients),
// scaled from amax_prev, records this call's amax in amax_cur and writes 1/scale (see fp8.cu).
template <bool F8>
__device__ void bias_gelu_forward_vec_impl(bf16* out, fp8* out8, float* inv_scale, float* amax_cur,
                                           const float* amax_prev, const bf16* h, const bf16* bias, int N, int C) {
    const int c = (blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (c >= C) return;
    const float s = F8 ? fp8_begin(amax_prev, E4M3_MAX, inv_scale) : 1.0f;
    float m = 0.0f;
    float b8[8];
    load8(b8, bias + c);
    for (long long r = blockIdx.y; r < N; r += gridDim.y) {
        float x8[8];
        load8(x8, h + r * C + c);
#pragma unroll
        for (int j = 0; j < 8; ++j) x8[j] = gelu(bf(tobf(x8[j] + b8[j])));
        store8(out + r * C + c, x8);
        if (F8) {
#pragma unroll
            for (int j = 0; j < 8; ++j) m = fmaxf(m, fabsf(x8[j]));
            store8_fp8<false>(out8 + r * C + c, x8, s);
        }
    }
    if (F8) amax_commit(amax_cur, m);
}

template <bool F8, bool G_E5M2>
__device__ void bias_gelu_backward_vec_impl(bf16* dh, fp8* dh8, float* inv_scale, float* amax_cur,
                                            const float* amax_prev, float* partials, const bf16* dout,
                                            const bf16* h, const bf16* bias, int N, int C) {
    const int c = (blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (c >= C) return;
    const float s = F8 ? fp8_begin(amax_prev, G_E5M2 ? E5M2_MAX : E4M3_MAX, inv_scale) : 1.0f;
    float m = 0.0f;
    float b8[8], db[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    load8(b8, bias + c);
    for (long long r = blockIdx.y; r < N; r += gridDim.y) {
        float x8[8], g8[8];
        load8(x8, h + r * C + c);
        load8(g8, dout + r * C + c);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            g8[j] = bf(tobf(g8[j] * gelu_grad(bf(tobf(x8[j] + b8[j])))));
            db[j] += g8[j];
        }
        store8(dh + r * C + c, g8);
        if (F8) {
#pragma unroll
            for (int j = 0; j < 8; ++j) m = fmaxf(m, fabsf(g8[j]));
            store8_fp8<G_E5M2>(dh8 + r * C + c, g8, s);
        }
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) partials[(long long)blockIdx.y * C + c + j] = db[j];
    if (F8) amax_commit(amax_cur, m);
}

extern "C" __global__ void bias_gelu_forward_vec(bf16* out, const bf16* h, const bf16* bias, int N, int C) {
    bias_gelu_forward_vec_impl<false>(out, nullptr, nullptr, nullptr, nullptr, h, bias, N, C);
}

extern "C" __global__ void bias_gelu_backward_vec(bf16* dh, float* partials, const bf16* dout, const bf16* h,
                                                  const bf16* bias, int N, int C) {
    bias_gelu_backward_vec_impl<false, true>(dh, nullptr, nullptr, nullptr, nullptr, partials, dout, h, bias, N, C);
}

extern "C" __global__ void bias_gelu_forward_fp8(bf16* out, fp8* out8, float* inv_scale, float* amax_cur,
                                                 const float* amax_prev, const bf16* h, const bf16* bias, int N, int C) {
    bias_gelu_forward_vec_impl<true>(out, out8, inv_scale, amax_cur, amax_prev, h, bias, N, C);
}

extern "C" __global__ void bias_gelu_backward_fp8(bf16* dh, fp8* dh8, float* inv_scale, float* amax_cur,
                                                  const float* amax_prev, float* partials, const bf16* dout,
                                                  const bf16* h, const bf16* bias, int N, int C) {
    bias_gelu_backward_vec_impl<true, true>(dh, dh8, inv_scale, amax_cur, amax_prev, partials, dout, h, bias, N, C);
}

extern "C" __global__ void bias_gelu_backward_fp8_e4m3(bf16* dh, fp8* dh8, float* inv_scale, float* amax_cur,
                                                       const float* amax_prev, float* partials, const bf16* dout,
                                                       const bf16* h, const bf16* bias, int N, int C) {
    bias_gelu_backward_vec_impl<true, false>(dh, dh8, inv_scale, amax_cur, amax_prev, partials, dout, h, bias, N, C);
}
