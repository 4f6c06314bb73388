// Loads and stores that work for bf16 and fp32 tensors alike (the LLaMA-style kernels take either), with
// fp32 math: `load<V>` reads V consecutive elements into floats, `store<V>` writes them back rounded.
// V a multiple of 16 bytes' worth (8 bf16, 4 fp32) uses 16-byte accesses (pointer 16-byte aligned);
// any other V reads element by element (the scalar fallback, V = 1). bf16 goes through uint4 rather than
// common.cuh's bf16x8, which NVRTC splits into four 4-byte accesses (ld.global.v2.u16 in the PTX).
#pragma once
#include "common.cuh"

typedef float f32;

__device__ __forceinline__ float tof(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float tof(float x) { return x; }

template <typename T>
__device__ __forceinline__ T fromf(float x);
template <>
__device__ __forceinline__ bf16 fromf<bf16>(float x) { return __float2bfloat16(x); }
template <>
__device__ __forceinline__ float fromf<float>(float x) { return x; }

// elements of T in one 16-byte access
template <typename T>
__host__ __device__ constexpr int vec_width() { return 16 / (int)sizeof(T); }

template <int V>
__device__ __forceinline__ void load(float* f, const bf16* p) {
    if constexpr (V % 8 == 0) {
#pragma unroll
        for (int k = 0; k < V; k += 8) {
            const uint4 u = *reinterpret_cast<const uint4*>(p + k);
            const unsigned int w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
            for (int q = 0; q < 4; ++q) {  // a bf16 is the top half of its fp32: exact
                f[k + 2 * q] = __uint_as_float(w[q] << 16);
                f[k + 2 * q + 1] = __uint_as_float(w[q] & 0xffff0000u);
            }
        }
    } else {
#pragma unroll
        for (int k = 0; k < V; ++k) f[k] = bf(p[k]);
    }
}

template <int V>
__device__ __forceinline__ void load(float* f, const float* p) {
    if constexpr (V % 4 == 0) {
#pragma unroll
        for (int k = 0; k < V; k += 4) {
            const float4 t = *reinterpret_cast<const float4*>(p + k);
            f[k] = t.x;
            f[k + 1] = t.y;
            f[k + 2] = t.z;
            f[k + 3] = t.w;
        }
    } else {
#pragma unroll
        for (int k = 0; k < V; ++k) f[k] = p[k];
    }
}

template <int V>
__device__ __forceinline__ void store(bf16* p, const float* f) {
    if constexpr (V % 8 == 0) {
#pragma unroll
        for (int k = 0; k < V; k += 8) {
            unsigned int w[4];
#pragma unroll
            for (int q = 0; q < 4; ++q)
                w[q] = (unsigned int)__bfloat16_as_ushort(tobf(f[k + 2 * q])) |
                       ((unsigned int)__bfloat16_as_ushort(tobf(f[k + 2 * q + 1])) << 16);
            *reinterpret_cast<uint4*>(p + k) = make_uint4(w[0], w[1], w[2], w[3]);
        }
    } else {
#pragma unroll
        for (int k = 0; k < V; ++k) p[k] = tobf(f[k]);
    }
}

template <int V>
__device__ __forceinline__ void store(float* p, const float* f) {
    if constexpr (V % 4 == 0) {
#pragma unroll
        for (int k = 0; k < V; k += 4) *reinterpret_cast<float4*>(p + k) = make_float4(f[k], f[k + 1], f[k + 2], f[k + 3]);
    } else {
#pragma unroll
        for (int k = 0; k < V; ++k) p[k] = f[k];
    }
}
