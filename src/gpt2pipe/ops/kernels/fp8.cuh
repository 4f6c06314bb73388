// FP8 helpers (H100 and later): saturating conversions, power-of-two scales from an amax, amax atomics.
// Scaling is per tensor. A scale is a power of two, so undoing it (the GEMM's inverse scale) is exact.
#pragma once
#include "common.cuh"

#define E4M3_MAX 448.0f
#define E5M2_MAX 57344.0f

typedef unsigned char fp8;

// The largest power of two that maps `amax` to at most half the format's range: headroom for a tensor
// whose amax grew since it was measured (delayed scaling). No usable amax (0, inf, nan) -> 1.
__device__ __forceinline__ float fp8_scale(float amax, float fmax) {
    return (amax > 0.0f && amax < 3.0e38f) ? exp2f(floorf(log2f(0.5f * fmax / amax))) : 1.0f;
}

// Two floats -> two fp8 bytes (lo in the low byte), rounded to nearest, saturated to the finite range.
template <bool E5M2>
__device__ __forceinline__ unsigned int to_fp8x2(float lo, float hi) {
    unsigned short r;
    if (E5M2) asm("cvt.rn.satfinite.e5m2x2.f32 %0, %1, %2;" : "=h"(r) : "f"(hi), "f"(lo));
    else asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(hi), "f"(lo));
    return r;
}

// 8 floats * s -> 8 fp8 bytes in one 8-byte store
template <bool E5M2>
__device__ __forceinline__ void store8_fp8(fp8* p, const float* f, float s) {
    uint2 pk;
    pk.x = to_fp8x2<E5M2>(f[0] * s, f[1] * s) | (to_fp8x2<E5M2>(f[2] * s, f[3] * s) << 16);
    pk.y = to_fp8x2<E5M2>(f[4] * s, f[5] * s) | (to_fp8x2<E5M2>(f[6] * s, f[7] * s) << 16);
    *reinterpret_cast<uint2*>(p) = pk;
}

// max into *addr of non-negative floats: their bit patterns order like unsigned ints. One atomic per warp;
// safe after early returns (only the active lanes take part).
__device__ __forceinline__ void amax_commit(float* addr, float v) {
    const unsigned mask = __activemask();
    const unsigned m = __reduce_max_sync(mask, __float_as_uint(v));
    if ((threadIdx.x & 31) == __ffs(mask) - 1) atomicMax(reinterpret_cast<unsigned*>(addr), m);
}

__device__ __forceinline__ bool first_thread() {
    return blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0 && threadIdx.y == 0;
}

// A cast's scale from the amax it is based on; the first thread also hands 1/scale to the GEMM.
__device__ __forceinline__ float fp8_begin(const float* amax, float fmax, float* inv_scale) {
    const float s = fp8_scale(*amax, fmax);
    if (first_thread()) *inv_scale = 1.0f / s;
    return s;
}
