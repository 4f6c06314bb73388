// Token + position embedding. Forward: out[n, :] = wte[idx[n], :] + wpe[n % T, :].
// Backward is deterministic: wte rows are summed per token over positions pre-sorted by token (one block
// per run of equal tokens, in a fixed order), wpe rows are summed over the batch in a fixed order.
#include "common.cuh"

extern "C" __global__ void encoder_forward(bf16* out, const long long* idx, const bf16* wte, const bf16* wpe,
                                           int N, int T, int C) {
    const long long total = (long long)N * C;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const long long n = i / C;
        const int c = (int)(i % C);
        const int t = (int)(n % T);
        out[i] = tobf(bf(wte[idx[n] * C + c]) + bf(wpe[(long long)t * C + c]));
    }
}

// dwpe[t, c] += sum over b of dout[b, t, c]
extern "C" __global__ void encoder_backward_wpe(bf16* dwpe, const bf16* dout, int B, int T, int C) {
    const long long total = (long long)T * C;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        float acc = 0.0f;
        for (int b = 0; b < B; ++b) acc += bf(dout[(long long)b * total + i]);
        dwpe[i] = tobf(bf(dwpe[i]) + acc);
    }
}

// C % 8 == 0: each thread writes 8 channels with 16-byte accesses.
extern "C" __global__ void encoder_forward_vec(bf16* out, const long long* idx, const bf16* wte, const bf16* wpe,
                                               int N, int T, int C) {
    const int cv = C / 8;
    const long long total = (long long)N * cv;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const long long n = i / cv;
        const int c = (int)(i % cv) * 8;
        const int t = (int)(n % T);
        float a[8], p[8];
        load8(a, wte + idx[n] * C + c);
        load8(p, wpe + (long long)t * C + c);
#pragma unroll
        for (int j = 0; j < 8; ++j) a[j] += p[j];
        store8(out + n * C + c, a);
    }
}

// The same sums without knowing the runs in advance (no host sync to count them): one block per position
// of the token-sorted order; only the block at the start of a run works, summing the run in order.
extern "C" __global__ void encoder_backward_wte_sorted(bf16* dwte, const bf16* dout, const long long* order,
                                                       const long long* sorted_tokens, int N, int C) {
    const int i = blockIdx.x;
    const long long tok = sorted_tokens[i];
    if (i > 0 && sorted_tokens[i - 1] == tok) return;
    int end = i + 1;
    while (end < N && sorted_tokens[end] == tok) ++end;
    bf16* row = dwte + tok * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float acc = 0.0f;
        for (int k = i; k < end; ++k) acc += bf(dout[order[k] * C + c]);
        row[c] = tobf(bf(row[c]) + acc);
    }
}
