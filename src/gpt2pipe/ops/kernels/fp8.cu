// Casts to FP8 for the MLP's GEMMs (torch._scaled_mm does the matmuls).
// Activations and gradients use delayed scaling: the scale comes from the amax their slot had at the
// previous micro-step (amax_prev), and the kernel records this micro-step's amax (amax_cur) for the next.
// Weights use current scaling: weight_amax first, then weight_fp8 writes both layouts the GEMMs need.
// Every cast also writes 1/scale, the dequantisation factor handed to the GEMM.
#include "fp8.cuh"

// out == nullptr: only the amax is recorded
template <bool E5M2>
__device__ void cast_fp8_impl(fp8* out, float* inv_scale, float* amax_cur, const bf16* x, const float* amax_prev,
                              long long n8) {
    const float s = out != nullptr ? fp8_begin(amax_prev, E5M2 ? E5M2_MAX : E4M3_MAX, inv_scale) : 1.0f;
    float m = 0.0f;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n8; i += (long long)gridDim.x * blockDim.x) {
        float f[8];
        load8(f, x + i * 8);
#pragma unroll
        for (int k = 0; k < 8; ++k) m = fmaxf(m, fabsf(f[k]));
        if (out != nullptr) store8_fp8<E5M2>(out + i * 8, f, s);
    }
    amax_commit(amax_cur, m);
}

// x: n8 * 8 bf16 (16-byte aligned) -> out fp8
extern "C" __global__ void cast_e4m3(fp8* out, float* inv_scale, float* amax_cur, const bf16* x, const float* amax_prev,
                                     long long n8) {
    cast_fp8_impl<false>(out, inv_scale, amax_cur, x, amax_prev, n8);
}

extern "C" __global__ void cast_e5m2(fp8* out, float* inv_scale, float* amax_cur, const bf16* x, const float* amax_prev,
                                     long long n8) {
    cast_fp8_impl<true>(out, inv_scale, amax_cur, x, amax_prev, n8);
}

// amax of n8 * 8 bf16 into *amax (which starts at 0): calibration, and the weights' current scaling
extern "C" __global__ void amax_bf16(float* amax, const bf16* x, long long n8) {
    cast_fp8_impl<false>(nullptr, nullptr, amax, x, nullptr, n8);
}

// W (rows x cols, row-major bf16) -> w8 = W*s (rows x cols) and w8t = (W*s)^T (cols x rows), e4m3, with
// s from *amax (this step's). 32x32 tiles through shared memory keep both writes coalesced.
// Block (32, 8); grid (ceil(cols/32), ceil(rows/32)).
extern "C" __global__ void weight_fp8(fp8* w8, fp8* w8t, float* inv_scale, const bf16* w, const float* amax,
                                      int rows, int cols) {
    __shared__ float tile[32][33];
    const float s = fp8_begin(amax, E4M3_MAX, inv_scale);
    const int c0 = blockIdx.x * 32, r0 = blockIdx.y * 32;
    for (int i = threadIdx.y; i < 32; i += 8) {
        const int r = r0 + i, c = c0 + threadIdx.x;
        if (r < rows && c < cols) {
            const float v = bf(w[(long long)r * cols + c]) * s;
            tile[i][threadIdx.x] = v;
            w8[(long long)r * cols + c] = (fp8)(to_fp8x2<false>(v, 0.0f) & 0xff);
        }
    }
    __syncthreads();
    for (int i = threadIdx.y; i < 32; i += 8) {
        const int c = c0 + i, r = r0 + threadIdx.x;
        if (r < rows && c < cols) w8t[(long long)c * rows + r] = (fp8)(to_fp8x2<false>(tile[threadIdx.x][i], 0.0f) & 0xff);
    }
}
