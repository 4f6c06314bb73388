// RMSNorm, optionally fused with the residual add before it (pre-norm block):
//   res_out = residual + x (rounded to T, as the residual stream is stored), out = r * rstd [* w],
//   rstd = 1 / sqrt(mean(r^2) + eps). Without a residual it normalises x; w == nullptr means no gain.
// fp32 math for bf16 or fp32 tensors (T); the gain w is always fp32 (the caller upcasts it, as the
// reference does). One warp per row; rstd is kept for backward. Each row is read twice (the second
// read hits the cache) instead of being held in registers: any C works with the same code.
// `_vec` entries take 16-byte accesses (C a multiple of 8 bf16 / 4 fp32, tensors 16-byte aligned).
#include "typed.cuh"

// the gain of columns c .. c + V - 1 (fp32), or ones for an RMSNorm without gain (w == nullptr)
template <int V>
__device__ __forceinline__ void load_gain(float* g, const float* w, int c) {
    if (w != nullptr) {
        load<V>(g, w + c);
    } else {
#pragma unroll
        for (int j = 0; j < V; ++j) g[j] = 1.0f;
    }
}

template <typename T, int V>
__device__ void rms_forward(T* out, float* rstd_out, T* res_out, const T* x, const T* residual, const float* w,
                            int N, int C, float eps) {
    const int warps = blockDim.x / 32, lane = threadIdx.x % 32;
    const long long row = (long long)blockIdx.x * warps + threadIdx.x / 32;
    if (row >= N) return;
    const T* src = x + row * C;
    float ss = 0.0f;
    for (int c = lane * V; c < C; c += 32 * V) {
        float v[V];
        load<V>(v, src + c);
        if (residual != nullptr) {
            float r[V];
            load<V>(r, residual + row * C + c);
#pragma unroll
            for (int j = 0; j < V; ++j) v[j] = tof(fromf<T>(v[j] + r[j]));  // normalise the stored sum
            store<V>(res_out + row * C + c, v);
        }
#pragma unroll
        for (int j = 0; j < V; ++j) ss += v[j] * v[j];
    }
    if (residual != nullptr) src = res_out + row * C;  // this lane reads back only what it wrote
    const float rstd = rsqrtf(warp_sum(ss) / C + eps);
    for (int c = lane * V; c < C; c += 32 * V) {
        float v[V], g[V];
        load<V>(v, src + c);
        load_gain<V>(g, w, c);
#pragma unroll
        for (int j = 0; j < V; ++j) v[j] = v[j] * rstd * g[j];
        store<V>(out + row * C + c, v);
    }
    if (lane == 0) rstd_out[row] = rstd;
}

// dx = rstd * (dy*w - xhat * mean(dy*w*xhat)) [+ dres], xhat = inp * rstd. With a gain, per-block partial
// sums of dw = sum over rows of dy*xhat go to partials[blockIdx.x * C + c] (summed by the caller in a fixed
// order: deterministic). Dynamic shared memory: warps * C floats when partials != nullptr, each warp its
// own slice, column c = v*V + j stored at j*nv + v (lanes own consecutive v: no bank conflicts).
template <typename T, int V>
__device__ void rms_backward(T* dx, float* partials, const T* dy, const T* dres, const T* inp, const float* rstd,
                             const float* w, int N, int C) {
    extern __shared__ float acc[];
    const int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int nv = C / V;
    const bool want_dw = partials != nullptr;
    float* mine = acc + (long long)warp * C;
    if (want_dw) {
        for (int c = lane; c < C; c += 32) mine[c] = 0.0f;
        __syncwarp();
    }
    for (long long row = (long long)blockIdx.x * warps + warp; row < N; row += (long long)gridDim.x * warps) {
        const float r = rstd[row];
        float dot = 0.0f;
        for (int c = lane * V; c < C; c += 32 * V) {
            float x[V], g[V], gw[V];
            load<V>(x, inp + row * C + c);
            load<V>(g, dy + row * C + c);
            load_gain<V>(gw, w, c);
#pragma unroll
            for (int j = 0; j < V; ++j) dot += g[j] * gw[j] * x[j];
        }
        dot = warp_sum(dot) * r / C;  // mean(dy * w * xhat)
        for (int c = lane * V; c < C; c += 32 * V) {
            float x[V], g[V], gw[V], o[V];
            load<V>(x, inp + row * C + c);
            load<V>(g, dy + row * C + c);
            load_gain<V>(gw, w, c);
            if (dres != nullptr) {
                load<V>(o, dres + row * C + c);
            } else {
#pragma unroll
                for (int j = 0; j < V; ++j) o[j] = 0.0f;
            }
            const int v = c / V;
#pragma unroll
            for (int j = 0; j < V; ++j) {
                const float xhat = x[j] * r;
                o[j] += r * (g[j] * gw[j] - xhat * dot);
                if (want_dw) mine[j * nv + v] += g[j] * xhat;
            }
            store<V>(dx + row * C + c, o);
        }
    }
    if (!want_dw) return;
    __syncthreads();
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        const int at = (c % V) * nv + c / V;
        float s = 0.0f;
        for (int k = 0; k < warps; ++k) s += acc[(long long)k * C + at];
        partials[(long long)blockIdx.x * C + c] = s;
    }
}

// T is bf16 or f32; the _vec entries read vec_width<T>() elements per access.
#define RMS_ENTRY(T)                                                                                          \
    extern "C" __global__ void rmsnorm_forward_##T(T* out, float* rstd, T* res_out, const T* x,              \
                                                   const T* residual, const float* w, int N, int C, float eps) { \
        rms_forward<T, 1>(out, rstd, res_out, x, residual, w, N, C, eps);                                      \
    }                                                                                                          \
    extern "C" __global__ void rmsnorm_forward_vec_##T(T* out, float* rstd, T* res_out, const T* x,          \
                                                       const T* residual, const float* w, int N, int C,       \
                                                       float eps) {                                            \
        rms_forward<T, vec_width<T>()>(out, rstd, res_out, x, residual, w, N, C, eps);                         \
    }                                                                                                          \
    extern "C" __global__ void rmsnorm_backward_##T(T* dx, float* partials, const T* dy, const T* dres,      \
                                                    const T* inp, const float* rstd, const float* w, int N,  \
                                                    int C) {                                                   \
        rms_backward<T, 1>(dx, partials, dy, dres, inp, rstd, w, N, C);                                        \
    }                                                                                                          \
    extern "C" __global__ void rmsnorm_backward_vec_##T(T* dx, float* partials, const T* dy, const T* dres,  \
                                                        const T* inp, const float* rstd, const float* w,      \
                                                        int N, int C) {                                        \
        rms_backward<T, vec_width<T>()>(dx, partials, dy, dres, inp, rstd, w, N, C);                           \
    }

RMS_ENTRY(bf16)
RMS_ENTRY(f32)
