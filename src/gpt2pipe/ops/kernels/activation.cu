// The LLaMA-style MLP activations, fp32 math for bf16 or fp32 tensors (T):
//   SwiGLU: h [N, 2F] = [gate | up] per row -> out [N, F] = silu(gate) * up; backward dh [N, 2F].
//   ReLU^2: out = relu(h)^2 elementwise; backward dh = 2 relu(h) dout.
// Grid-stride loops over vectors of V elements; `_vec` entries take 16-byte accesses (F, resp. n, a
// multiple of 8 bf16 / 4 fp32 and tensors 16-byte aligned), the others go element by element.
#include "typed.cuh"

// 1 / (1 + e^-x) without an overflowing exponential (|x| large in either direction stays finite)
__device__ __forceinline__ float sigmoid(float x) {
    if (x >= 0.0f) return 1.0f / (1.0f + __expf(-x));
    const float e = __expf(x);
    return e / (1.0f + e);
}

template <typename T, int V>
__device__ void swiglu_fwd(T* out, const T* h, long long N, int F) {
    const long long vecs = N * F / V;  // F % V == 0
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < vecs;
         i += (long long)gridDim.x * blockDim.x) {
        const long long e = i * V, n = e / F;
        const int j = (int)(e - n * F);
        const T* row = h + n * 2 * F;
        float g[V], u[V];
        load<V>(g, row + j);
        load<V>(u, row + F + j);
#pragma unroll
        for (int k = 0; k < V; ++k) g[k] = g[k] * sigmoid(g[k]) * u[k];
        store<V>(out + e, g);
    }
}

template <typename T, int V>
__device__ void swiglu_bwd(T* dh, const T* dout, const T* h, long long N, int F) {
    const long long vecs = N * F / V;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < vecs;
         i += (long long)gridDim.x * blockDim.x) {
        const long long e = i * V, n = e / F;
        const int j = (int)(e - n * F);
        const T* row = h + n * 2 * F;
        float g[V], u[V], d[V];
        load<V>(g, row + j);
        load<V>(u, row + F + j);
        load<V>(d, dout + e);
#pragma unroll
        for (int k = 0; k < V; ++k) {
            const float sg = sigmoid(g[k]);
            const float silu = g[k] * sg;
            g[k] = d[k] * u[k] * sg * (1.0f + g[k] * (1.0f - sg));  // d silu/dg = sg (1 + g (1 - sg))
            u[k] = d[k] * silu;
        }
        store<V>(dh + n * 2 * F + j, g);
        store<V>(dh + n * 2 * F + F + j, u);
    }
}

template <typename T, int V>
__device__ void relu2_fwd(T* out, const T* h, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n / V;
         i += (long long)gridDim.x * blockDim.x) {
        float x[V];
        load<V>(x, h + i * V);
#pragma unroll
        for (int k = 0; k < V; ++k) {
            const float r = fmaxf(x[k], 0.0f);
            x[k] = r * r;
        }
        store<V>(out + i * V, x);
    }
}

template <typename T, int V>
__device__ void relu2_bwd(T* dh, const T* dout, const T* h, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n / V;
         i += (long long)gridDim.x * blockDim.x) {
        float x[V], d[V];
        load<V>(x, h + i * V);
        load<V>(d, dout + i * V);
#pragma unroll
        for (int k = 0; k < V; ++k) x[k] = 2.0f * fmaxf(x[k], 0.0f) * d[k];
        store<V>(dh + i * V, x);
    }
}

#define ACT_ENTRY(T)                                                                                          \
    extern "C" __global__ void swiglu_forward_##T(T* out, const T* h, long long N, int F) {                  \
        swiglu_fwd<T, 1>(out, h, N, F);                                                                        \
    }                                                                                                          \
    extern "C" __global__ void swiglu_forward_vec_##T(T* out, const T* h, long long N, int F) {              \
        swiglu_fwd<T, vec_width<T>()>(out, h, N, F);                                                           \
    }                                                                                                          \
    extern "C" __global__ void swiglu_backward_##T(T* dh, const T* dout, const T* h, long long N, int F) {   \
        swiglu_bwd<T, 1>(dh, dout, h, N, F);                                                                   \
    }                                                                                                          \
    extern "C" __global__ void swiglu_backward_vec_##T(T* dh, const T* dout, const T* h, long long N, int F) { \
        swiglu_bwd<T, vec_width<T>()>(dh, dout, h, N, F);                                                      \
    }                                                                                                          \
    extern "C" __global__ void relu2_forward_##T(T* out, const T* h, long long n) {                          \
        relu2_fwd<T, 1>(out, h, n);                                                                            \
    }                                                                                                          \
    extern "C" __global__ void relu2_forward_vec_##T(T* out, const T* h, long long n) {                      \
        relu2_fwd<T, vec_width<T>()>(out, h, n);                                                               \
    }                                                                                                          \
    extern "C" __global__ void relu2_backward_##T(T* dh, const T* dout, const T* h, long long n) {           \
        relu2_bwd<T, 1>(dh, dout, h, n);                                                                       \
    }                                                                                                          \
    extern "C" __global__ void relu2_backward_vec_##T(T* dh, const T* dout, const T* h, long long n) {       \
        relu2_bwd<T, vec_width<T>()>(dh, dout, h, n);                                                          \
    }

ACT_ENTRY(bf16)
ACT_ENTRY(f32)
