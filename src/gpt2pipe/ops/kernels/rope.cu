// Packed attention projections -> q, k, v in SDPA's layout, with QK-norm and rotary embeddings on the way:
//   qkv [B, S, H + 2G, D] (the c_attn output, heads q0..qH-1, k0..kG-1, v0..vG-1 along the last dim)
//   q [B, H, S, D], k and v [B, G, S, D], contiguous.
// q and k heads are RMS-normed over D without a gain (qk_norm != 0; rstd kept per head for backward), then
// rotated in Hugging Face Llama's half-split convention: (x1, x2) -> (x1 c - x2 s, x2 c + x1 s), x1 and x2
// the first and second half of D, c = cos[t, i], s = sin[t, i] from fp32 tables [>= S, D/2]. v is copied.
// fp32 math for bf16 or fp32 tensors (T); no rounding between the norm and the rotation.
// One warp per (token, head) row of qkv: lane i handles the pairs (i, i + D/2), i += 32; any even D.
// The _vec entries (D/2 a multiple of 16 bytes' worth, tensors 16-byte aligned) give a row `lanes` lanes (a
// power of two <= 32: several rows a warp) and each lane V consecutive pairs through 16-byte accesses: at
// D = 128 the one-warp-per-row kernels moved ~1 TB/s on the H200, 2-byte accesses and 64-byte warp requests.
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


// --- the vectorised entries: `lanes` lanes a row, V = 16 bytes of T per access -------------------------------

// the sum over the row's lanes (an aligned group of `lanes` lanes: xor partners stay inside it)
__device__ __forceinline__ float row_sum(float x, int lanes, unsigned int mask) {
    for (int o = lanes / 2; o > 0; o >>= 1) x += __shfl_xor_sync(mask, x, o);
    return x;
}

__device__ __forceinline__ unsigned int row_mask(int lanes) {
    const int lane = threadIdx.x % 32;
    return lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u) << (lane / lanes * lanes);
}

template <typename T>
__device__ void rope_forward_vec(T* q, T* k, T* v, float* rstd, const T* qkv, const float* cos, const float* sin,
                                 int B, int S, int H, int G, int D, int qk_norm, float eps, int lanes) {
    constexpr int V = vec_width<T>();
    const long long row = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / lanes;
    if (row >= (long long)B * S * (H + 2 * G)) return;  // whole rows leave together
    const int sub = threadIdx.x % lanes, step = lanes * V, half = D / 2;
    const RopeRow at = rope_row(row, S, H, G, D);
    const T* src = qkv + row * D;
    float x1[V], x2[V];
    if (at.which == 2) {
        for (int i = sub * V; i < D; i += step) {
            load<V>(x1, src + i);
            store<V>(v + at.out + i, x1);
        }
        return;
    }
    T* dst = (at.which == 0 ? q : k) + at.out;
    float r = 1.0f;
    if (qk_norm) {
        float ss = 0.0f;
        for (int i = sub * V; i < D; i += step) {
            load<V>(x1, src + i);
#pragma unroll
            for (int j = 0; j < V; ++j) ss += x1[j] * x1[j];
        }
        r = rsqrtf(row_sum(ss, lanes, row_mask(lanes)) / D + eps);
        if (sub == 0) rstd[at.head] = r;
    }
    const float* c = cos + (long long)at.t * half;
    const float* s = sin + (long long)at.t * half;
    for (int i = sub * V; i < half; i += step) {
        float cc[V], sn[V], y1[V], y2[V];
        load<V>(x1, src + i);
        load<V>(x2, src + i + half);
        load<V>(cc, c + i);
        load<V>(sn, s + i);
#pragma unroll
        for (int j = 0; j < V; ++j) {
            const float a = x1[j] * r, b = x2[j] * r;
            y1[j] = a * cc[j] - b * sn[j];
            y2[j] = b * cc[j] + a * sn[j];
        }
        store<V>(dst + i, y1);
        store<V>(dst + i + half, y2);
    }
}

template <typename T>
__device__ void rope_backward_vec(T* dqkv, const T* dq, const T* dk, const T* dv, const T* q, const T* k,
                                  const float* rstd, const float* cos, const float* sin, int B, int S, int H, int G,
                                  int D, int qk_norm, int lanes) {
    constexpr int V = vec_width<T>();
    const long long row = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / lanes;
    if (row >= (long long)B * S * (H + 2 * G)) return;
    const int sub = threadIdx.x % lanes, step = lanes * V, half = D / 2;
    const RopeRow at = rope_row(row, S, H, G, D);
    T* dst = dqkv + row * D;
    float g1[V], g2[V];
    if (at.which == 2) {
        for (int i = sub * V; i < D; i += step) {
            load<V>(g1, dv + at.out + i);
            store<V>(dst + i, g1);
        }
        return;
    }
    const T* dy = (at.which == 0 ? dq : dk) + at.out;
    const T* y = (at.which == 0 ? q : k) + at.out;
    const float* c = cos + (long long)at.t * half;
    const float* s = sin + (long long)at.t * half;
    float r = 1.0f, dot = 0.0f;
    if (qk_norm && half == step) {  // a lane's share of the row is one access a half: one pass, in registers
        // (D = 64, 128, 256 in bf16 or fp32; the two-pass loop below ran at half the forward's bandwidth there)
        const int i = sub * V;
        float cc[V], sn[V], y1[V], y2[V], dn1[V], dn2[V], n1[V], n2[V];
        load<V>(g1, dy + i);
        load<V>(g2, dy + i + half);
        load<V>(cc, c + i);
        load<V>(sn, s + i);
        load<V>(y1, y + i);
        load<V>(y2, y + i + half);
#pragma unroll
        for (int j = 0; j < V; ++j) {
            dn1[j] = g1[j] * cc[j] + g2[j] * sn[j];
            dn2[j] = g2[j] * cc[j] - g1[j] * sn[j];
            const float inv = 1.0f / (cc[j] * cc[j] + sn[j] * sn[j]);
            n1[j] = (y1[j] * cc[j] + y2[j] * sn[j]) * inv;
            n2[j] = (y2[j] * cc[j] - y1[j] * sn[j]) * inv;
            dot += dn1[j] * n1[j] + dn2[j] * n2[j];
        }
        r = rstd[at.head];
        dot = row_sum(dot, lanes, row_mask(lanes)) / D;
#pragma unroll
        for (int j = 0; j < V; ++j) {
            g1[j] = r * (dn1[j] - n1[j] * dot);
            g2[j] = r * (dn2[j] - n2[j] * dot);
        }
        store<V>(dst + i, g1);
        store<V>(dst + i + half, g2);
        return;
    }
    // two passes when QK-norm needs the row's dot product first; the second reads the row again (from cache)
    for (int pass = qk_norm ? 0 : 1; pass < 2; ++pass) {
        for (int i = sub * V; i < half; i += step) {
            float cc[V], sn[V], y1[V], y2[V], o1[V], o2[V];
            load<V>(g1, dy + i);
            load<V>(g2, dy + i + half);
            load<V>(cc, c + i);
            load<V>(sn, s + i);
            if (qk_norm) {
                load<V>(y1, y + i);
                load<V>(y2, y + i + half);
            }
#pragma unroll
            for (int j = 0; j < V; ++j) {
                const float dn1 = g1[j] * cc[j] + g2[j] * sn[j], dn2 = g2[j] * cc[j] - g1[j] * sn[j];
                float n1 = 0.0f, n2 = 0.0f;
                if (qk_norm) {
                    const float inv = 1.0f / (cc[j] * cc[j] + sn[j] * sn[j]);
                    n1 = (y1[j] * cc[j] + y2[j] * sn[j]) * inv;
                    n2 = (y2[j] * cc[j] - y1[j] * sn[j]) * inv;
                }
                if (pass == 0) {
                    dot += dn1 * n1 + dn2 * n2;
                } else {
                    o1[j] = qk_norm ? r * (dn1 - n1 * dot) : dn1;
                    o2[j] = qk_norm ? r * (dn2 - n2 * dot) : dn2;
                }
            }
            if (pass == 1) {
                store<V>(dst + i, o1);
                store<V>(dst + i + half, o2);
            }
        }
        if (pass == 0) {
            r = rstd[at.head];
            dot = row_sum(dot, lanes, row_mask(lanes)) / D;
        }
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
    }                                                                                                         \
    extern "C" __global__ void qkv_rope_forward_vec_##T(T* q, T* k, T* v, float* rstd, const T* qkv,        \
                                                        const float* cos, const float* sin, int B, int S,    \
                                                        int H, int G, int D, int qk_norm, float eps,          \
                                                        int lanes) {                                          \
        rope_forward_vec<T>(q, k, v, rstd, qkv, cos, sin, B, S, H, G, D, qk_norm, eps, lanes);                \
    }                                                                                                         \
    extern "C" __global__ void qkv_rope_backward_vec_##T(T* dqkv, const T* dq, const T* dk, const T* dv,    \
                                                         const T* q, const T* k, const float* rstd,          \
                                                         const float* cos, const float* sin, int B, int S,   \
                                                         int H, int G, int D, int qk_norm, int lanes) {       \
        rope_backward_vec<T>(dqkv, dq, dk, dv, q, k, rstd, cos, sin, B, S, H, G, D, qk_norm, lanes);          \
    }

ROPE_ENTRY(bf16)
ROPE_ENTRY(f32)
