// Shared helpers for gpt2pipe's kernels: bf16 conversions and warp/block reductions.
#pragma once
#include <cuda_bf16.h>

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float bf(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ bf16 tobf(float x) { return __float2bfloat16(x); }

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Reduce over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// The trailing barrier lets a caller reduce again right away.
template <typename WarpOp>
__device__ float block_reduce(float v, WarpOp warp_op, float identity) {
    __shared__ float partial[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = warp_op(v);
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    v = (threadIdx.x < warps) ? partial[threadIdx.x] : identity;
    if (warp == 0) v = warp_op(v);
    if (threadIdx.x == 0) partial[0] = v;
    __syncthreads();
    v = partial[0];
    __syncthreads();
    return v;
}

struct WarpSum {
    __device__ float operator()(float v) const { return warp_sum(v); }
};
struct WarpMax {
    __device__ float operator()(float v) const { return warp_max(v); }
};

__device__ __forceinline__ float block_sum(float v) { return block_reduce(v, WarpSum(), 0.0f); }
__device__ __forceinline__ float block_max(float v) { return block_reduce(v, WarpMax(), -3.0e38f); }

// 8 bf16 in one 16-byte access: the widest load a thread can issue
struct __align__(16) bf16x8 { __nv_bfloat162 v[4]; };

__device__ __forceinline__ void load8(float* f, const bf16* p) {
    const bf16x8 pk = *reinterpret_cast<const bf16x8*>(p);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const float2 t = __bfloat1622float2(pk.v[k]);
        f[2 * k] = t.x;
        f[2 * k + 1] = t.y;
    }
}

__device__ __forceinline__ void store8(bf16* p, const float* f) {
    bf16x8 pk;
#pragma unroll
    for (int k = 0; k < 4; ++k) pk.v[k] = __floats2bfloat162_rn(f[2 * k], f[2 * k + 1]);
    *reinterpret_cast<bf16x8*>(p) = pk;
}
