// Packed attention projections -> q, k, v in SDPA's layout, with QK-norm and rotary embeddings on the way:
//   qkv [B, S, H + 2G, D] (the c_attn output, heads q0..qH-1, k0..kG-1, v0..vG-1 along the last dim)
//   q [B, H, S, D], k and v [B, G, S, D], contiguous.
// q and k heads are RMS-normed over D without a gain (qk_norm != 0; rstd kept per head for backward), then
// rotated in Hugging Face Llama's half-split convention: (x1, x2) -> (x1 c - x2 s, x2 c + x1 s), x1 and x2
// the first and second half of D, c = cos[t, i], s = sin[t, i] from fp32 tables [>= S, D/2]. v is copied.
// fp32 math for bf16 or fp32 tensors (T); no rounding between the norm and the rotation.
// One warp per (token, head) row of qkv: lane i handles the pairs (i, i + D/2), i += 32; any even D.
#include "typed.cuh"

// where row `row` of the packed input lands: its output tensor and row, and (q/k heads) its rstd slot
struct RopeRow {
    long long out;  // element offset of the output row in q, k or v
    int which;      // 0 q, 1 k, 2 v
    long long head; // (b * S + t) * (H + G) + head, the rstd index of a q or k head
    int t;
};

__device__ __forceinline__ RopeRow rope_row(long long row, int S, int H, int G, int D) {
    const int nh = H + 2 * G;
    const int hh = (int)(row % nh);
    const long long bt = row / nh;
    const long long b = bt / S;
    const int t = (int)(bt % S);
    RopeRow r;
    r.t = t;
    r.head = bt * (H + G) + hh;
    if (hh < H) {
        r.which = 0;
        r.out = ((b * H + hh) * S + t) * D;
    } else if (hh < H + G) {
        r.which = 1;
        r.out = ((b * G + (hh - H)) * S + t) * D;
    } else {
        r.which = 2;
        r.out = ((b * G + (hh - H - G)) * S + t) * D;
    }
    return r;
}

template <typename T>
__device__ void rope_forward(T* q, T* k, T* v, float* rstd, const T* qkv, const float* cos, const float* sin,
                             int B, int S, int H, int G, int D, int qk_norm, float eps) {
    const int warps = blockDim.x / 32, lane = threadIdx.x % 32;
    const long long row = (long long)blockIdx.x * warps + threadIdx.x / 32;
    if (row >= (long long)B * S * (H + 2 * G)) return;
    const RopeRow at = rope_row(row, S, H, G, D);
    const T* src = qkv + row * D;
    if (at.which == 2) {
        for (int i = lane; i < D; i += 32) v[at.out + i] = src[i];
        return;
    }
    T* dst = (at.which == 0 ? q : k) + at.out;
    float r = 1.0f;
    if (qk_norm) {
        float ss = 0.0f;
        for (int i = lane; i < D; i += 32) {
            const float x = tof(src[i]);
            ss += x * x;
        }
        r = rsqrtf(warp_sum(ss) / D + eps);
        if (lane == 0) rstd[at.head] = r;
    }
    const int half = D / 2;
    const float* c = cos + (long long)at.t * half;
    const float* s = sin + (long long)at.t * half;
    for (int i = lane; i < half; i += 32) {
        const float x1 = tof(src[i]) * r, x2 = tof(src[i + half]) * r;
        dst[i] = fromf<T>(x1 * c[i] - x2 * s[i]);
        dst[i + half] = fromf<T>(x2 * c[i] + x1 * s[i]);
    }
}

// dqkv from dq, dk, dv: the transposed rotation, then the RMSNorm backward without a gain,
// dx = rstd * (dn - n * mean(dn * n)). The normalised n is recovered from the saved outputs q and k by
// the inverse rotation (SDPA keeps q and k for its own backward anyway, so saving them costs no memory);
// q and k are read only when qk_norm. The inverse divides by c^2 + s^2: tables rounded to bf16 (a model
// cast with .bfloat16()) are not exactly orthogonal, and the reference rotates with those values.
template <typename T>
__device__ void rope_backward(T* dqkv, const T* dq, const T* dk, const T* dv, const T* q, const T* k,
                              const float* rstd, const float* cos, const float* sin, int B, int S, int H, int G,
                              int D, int qk_norm) {
    const int warps = blockDim.x / 32, lane = threadIdx.x % 32;
    const long long row = (long long)blockIdx.x * warps + threadIdx.x / 32;
    if (row >= (long long)B * S * (H + 2 * G)) return;
    const RopeRow at = rope_row(row, S, H, G, D);
    T* dst = dqkv + row * D;
    if (at.which == 2) {
        for (int i = lane; i < D; i += 32) dst[i] = dv[at.out + i];
        return;
    }
    const T* dy = (at.which == 0 ? dq : dk) + at.out;
    const T* y = (at.which == 0 ? q : k) + at.out;
    const int half = D / 2;
    const float* c = cos + (long long)at.t * half;
    const float* s = sin + (long long)at.t * half;
    float r = 1.0f, dot = 0.0f;
    if (qk_norm) {
        r = rstd[at.head];
        for (int i = lane; i < half; i += 32) {
            const float g1 = tof(dy[i]), g2 = tof(dy[i + half]);
            const float y1 = tof(y[i]), y2 = tof(y[i + half]);
            const float dn1 = g1 * c[i] + g2 * s[i], dn2 = g2 * c[i] - g1 * s[i];
            const float inv = 1.0f / (c[i] * c[i] + s[i] * s[i]);
            const float n1 = (y1 * c[i] + y2 * s[i]) * inv, n2 = (y2 * c[i] - y1 * s[i]) * inv;
            dot += dn1 * n1 + dn2 * n2;
        }
        dot = warp_sum(dot) / D;
    }
    for (int i = lane; i < half; i += 32) {
        const float g1 = tof(dy[i]), g2 = tof(dy[i + half]);
        float dn1 = g1 * c[i] + g2 * s[i], dn2 = g2 * c[i] - g1 * s[i];
        if (qk_norm) {
            const float y1 = tof(y[i]), y2 = tof(y[i + half]);
            const float inv = 1.0f / (c[i] * c[i] + s[i] * s[i]);
            const float n1 = (y1 * c[i] + y2 * s[i]) * inv, n2 = (y2 * c[i] - y1 * s[i]) * inv;
            dn1 = r * (dn1 - n1 * dot);
            dn2 = r * (dn2 - n2 * dot);
        }
        dst[i] = fromf<T>(dn1);
        dst[i + half] = fromf<T>(dn2);
    }
}

#define ROPE_ENTRY(T)                                                                                        \
    extern "C" __global__ void qkv_rope_forward_##T(T* q, T* k, T* v, float* rstd, const T* qkv,            \
                                                    const float* cos, const float* sin, int B, int S, int H, \
                                                    int G, int D, int qk_norm, float eps) {                   \
        rope_forward<T>(q, k, v, rstd, qkv, cos, sin, B, S, H, G, D, qk_norm, eps);                           \
    }                                                                                                         \
    extern "C" __global__ void qkv_rope_backward_##T(T* dqkv, const T* dq, const T* dk, const T* dv,        \
                                                     const T* q, const T* k, const float* rstd,              \
                                                     const float* cos, const float* sin, int B, int S, int H, \
                                                     int G, int D, int qk_norm) {                             \
        rope_backward<T>(dqkv, dq, dk, dv, q, k, rstd, cos, sin, B, S, H, G, D, qk_norm);                     \
    }

ROPE_ENTRY(bf16)
ROPE_ENTRY(f32)
