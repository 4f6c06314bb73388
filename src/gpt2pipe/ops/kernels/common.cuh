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

// 8 bf16 in one 16-byte access, the widest a thread can issue: through uint4, because a struct of four
// __nv_bfloat162 compiles to four 4-byte accesses (ld.global.v2.u16 / st.global.u32 in the PTX)
struct __align__(16) bf16x8 { __nv_bfloat162 v[4]; };  // the classifier's packed view of 8 logits

__device__ __forceinline__ void load8(float* f, const bf16* p) {
    const uint4 u = *reinterpret_cast<const uint4*>(p);
    const unsigned int w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {  // a bf16 is the top half of its fp32: exact
        f[2 * k] = __uint_as_float(w[k] << 16);
        f[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
    }
}

__device__ __forceinline__ void store8(bf16* p, const float* f) {
    unsigned int w[4];
#pragma unroll
    for (int k = 0; k < 4; ++k)
        w[k] = (unsigned int)__bfloat16_as_ushort(tobf(f[2 * k])) |
               ((unsigned int)__bfloat16_as_ushort(tobf(f[2 * k + 1])) << 16);
    *reinterpret_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
}
