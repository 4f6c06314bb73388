// Fused classifier: softmax + cross-entropy + gradient of the logits, in place.
// For each row (token): loss = logsumexp(logits[:V]) - logits[target]; then, if write_grad, the row is
// overwritten with dlogits = (softmax - onehot(target)) * dscale, and the padded columns V..Vp with 0.
// One block per row; 16-byte loads (Vp must be a multiple of 8, rows 16-byte aligned).
#include "common.cuh"

__device__ __forceinline__ void online(float& m, float& s, float x) {
    const float mn = fmaxf(m, x);
    s = s * __expf(m - mn) + __expf(x - mn);
    m = mn;
}

extern "C" __global__ void fused_classifier(bf16* logits, float* losses, const long long* targets,
                                            int V, int Vp, float dscale, int write_grad) {
    const long long row = blockIdx.x;
    bf16* lr = logits + row * Vp;
    const bf16x8* lv = reinterpret_cast<const bf16x8*>(lr);
    const int full = V / 8;  // vectors entirely inside the real vocabulary
    float m = -3.0e38f, s = 0.0f;
    for (int i = threadIdx.x; i < full; i += blockDim.x) {
        const bf16x8 pack = lv[i];
        for (int k = 0; k < 4; ++k) {
            const float2 f = __bfloat1622float2(pack.v[k]);
            online(m, s, f.x);
            online(m, s, f.y);
        }
    }
    for (int i = full * 8 + threadIdx.x; i < V; i += blockDim.x) online(m, s, bf(lr[i]));
    const float bm = block_max(m);
    const float bs = block_sum(s * __expf(m - bm));
    const float lse = bm + __logf(bs);
    const long long tgt = targets[row];
    const float lt = bf(lr[tgt]);
    __syncthreads();  // every thread has read the target logit before any is overwritten
    if (threadIdx.x == 0) losses[row] = lse - lt;
    if (!write_grad) return;
    bf16x8* wv = reinterpret_cast<bf16x8*>(lr);
    const int vecs = Vp / 8;
    for (int i = threadIdx.x; i < vecs; i += blockDim.x) {
        bf16x8 pack = wv[i];
        for (int k = 0; k < 4; ++k) {
            const float2 f = __bfloat1622float2(pack.v[k]);
            const int j = i * 8 + 2 * k;
            float g0 = j < V ? (__expf(f.x - lse) - (j == tgt ? 1.0f : 0.0f)) * dscale : 0.0f;
            float g1 = j + 1 < V ? (__expf(f.y - lse) - (j + 1 == tgt ? 1.0f : 0.0f)) * dscale : 0.0f;
            pack.v[k] = __floats2bfloat162_rn(g0, g1);
        }
        wv[i] = pack;
    }
}
