// AdamW over all parameters at once (one flat buffer: the "multi-tensor" update in one launch).
// bf16 parameters for the forward/backward, fp32 master weights and moments; the gradient is scaled by
// clip[1] (written on the device by global_norm_finalize, so clipping needs no host sync).
// Elements [0, n_decay) get weight decay (the 2-D weights are laid out first). Stochastic rounding of the
// new bf16 parameter is optional (llm.c does it) and seeded per step and by the element's index in the
// whole buffer (offset = where this ZeRO shard starts), so any number of shards rounds alike.
#include "common.cuh"

__device__ __forceinline__ unsigned int mix(unsigned int seed, unsigned long long i) {
    // squirrel-noise-style integer hash: cheap, stateless, different per element and per step
    unsigned int x = (unsigned int)i * 0xB5297A4Du + seed;
    x ^= x >> 8;
    x += 0x68E31DA4u;
    x ^= x << 8;
    x *= 0x1B56C4E9u;
    x ^= x >> 8;
    return x ^ (unsigned int)(i >> 32);
}

__device__ __forceinline__ bf16 round_stochastic(float x, unsigned int r) {
    unsigned int bits = __float_as_uint(x);
    bits += r & 0xFFFFu;
    return __ushort_as_bfloat16((unsigned short)(bits >> 16));
}

extern "C" __global__ void adamw_update(bf16* params, float* master, float* m, float* v, const bf16* grads,
                                        const float* clip, long long n, long long n_decay, long long offset,
                                        float lr,
                                        float beta1, float beta2, float bias1, float bias2, float eps,
                                        float weight_decay, unsigned int seed, int stochastic) {
    const float scale = clip[1];
    const float step = lr / bias1;
    const float bias2_sqrt = sqrtf(bias2);
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const float g = bf(grads[i]) * scale;
        const float mi = beta1 * m[i] + (1.0f - beta1) * g;
        const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        float p = master[i];
        if (i < n_decay) p *= 1.0f - lr * weight_decay;
        p -= step * mi / (sqrtf(vi) / bias2_sqrt + eps);
        master[i] = p;
        params[i] = stochastic ? round_stochastic(p, mix(seed, i + offset)) : tobf(p);
    }
}
