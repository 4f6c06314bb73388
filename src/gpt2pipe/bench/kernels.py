"""`gpt2pipe bench`'s per-op table: every kernel we own against its torch reference at GPT-2 shapes.

Every extern "C" kernel of ops/kernels/*.cu has a row (tests/test_bench_kernels.py checks it on a GPU):
the vectorised kernels the model runs at GPT-2 shapes, their fp8-writing variants, the scalar fallbacks
that odd shapes take (launched directly at the same shapes), the fp8 casts, the global norm and AdamW,
and the fused classifier both alone and with its GEMMs (weight gradient summed in fp32 and in bf16).

Times are per call as the model makes it (autograd and launch overhead included), median of CUDA-event
timings after a warm-up; bytes are the least the op must move, so ours GB/s against the device's copy
bandwidth says how close a memory-bound kernel is to its limit. dev/kernels/ has the per-version detail.
"""

from __future__ import annotations

import math
import statistics

import torch

from gpt2pipe.config import ModelConfig

COPY_BANDWIDTH = {"H100": 3.0e12, "H200": 4.3e12}  # measured device-to-device copy (read + write), bytes/s
FP8_CAPABILITY = (8, 9)


def time_ms(fn, reps: int = 20, warmup: int = 3) -> float:
    """Median milliseconds of fn() over reps, timed with CUDA events after a warm-up."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b))
    return statistics.median(out)


def time_us(fn, reps: int = 20, warmup: int = 3) -> float:
    """time_ms in microseconds, the unit of the per-op tables."""
    return time_ms(fn, reps, warmup) * 1e3


def grad_of(out, inputs, seed):
    """A backward pass to time: the gradients of out (seeded) with respect to inputs, the graph kept."""
    return lambda: torch.autograd.grad(out, inputs, seed, retain_graph=True)


def _gelu_grid(N: int, C: int, vec: bool) -> tuple[tuple[int, int], int]:
    """The grid and block ops/autograd.py launches the bias+GELU and bias-gradient kernels with."""
    from gpt2pipe.ops.cuda import sm_count

    threads = 128 if vec else 256
    cols = (C // (8 if vec else 1) + threads - 1) // threads
    return (cols, max(1, min(N, sm_count() * 16 // cols))), threads


def _fp8_rows(both, N: int, C: int, bf: dict) -> None:
    """The fp8 kernels (H100 and later): the casts, the amax pass, the weight copies, and the LayerNorm and
    bias+GELU kernels that write an fp8 copy of their output on the way (against bf16 op + torch cast)."""
    from gpt2pipe.ops import autograd as K
    from gpt2pipe.ops import reference as R
    from gpt2pipe.ops.fp8 import E4M3, E5M2, Fp8State, Slot

    state = Fp8State(1, torch.device("cuda"))
    state.amax_previous.fill_(4.0)
    x = torch.randn(N, 4 * C, **bf)
    target = state.target(0, Slot.GELU_OUTPUT)
    scale = torch.tensor(2.0 ** -6, device="cuda")

    def torch_cast(t, dtype):
        return (t.float() * scale).clamp(-448.0, 448.0).to(dtype)

    for name, dtype in (("fp8 cast e4m3", E4M3), ("fp8 cast e5m2", E5M2)):
        both(name, lambda dtype=dtype: target.cast(x, dtype), lambda dtype=dtype: torch_cast(x, dtype),
             3 * x.numel())
    both("fp8 amax", lambda: target.record_amax(x), lambda: x.abs().amax(), 2 * x.numel())
    w = torch.randn(4 * C, C, **bf) * 0.02
    weight = state.target(0, Slot.FC_WEIGHT)

    def torch_weight():
        s = 224.0 / w.abs().amax().float()
        w8 = (w.float() * s).to(E4M3)
        return w8, w8.t().contiguous()

    both("fp8 weight copies (W, W^T)", lambda: weight.weight_copies(w), torch_weight, 2 * w.numel() + 2 * w.numel())
    r, xs = torch.randn(N, C, **bf), torch.randn(N, C, **bf)
    lw, lb = torch.randn(C, **bf), torch.randn(C, **bf)
    ln_target = state.target(0, Slot.MLP_INPUT)

    def torch_ln8():
        res, out = R.residual_layernorm(r, xs, lw, lb)
        return res, out, torch_cast(out, E4M3)

    both("residual+layernorm fwd + e4m3 copy", lambda: K._ln_forward(xs, r, lw, lb, ln_target), torch_ln8,
         9 * N * C)
    h, bias = torch.randn(N, 4 * C, **bf), torch.randn(4 * C, **bf)
    both("bias+gelu fwd + e4m3 copy", lambda: K.bias_gelu_forward(h, bias, target),
         lambda: torch_cast(R.bias_gelu(h, bias), E4M3), 18 * N * C)
    g4 = torch.randn(N, 4 * C, **bf)
    hg, bg = h.clone().requires_grad_(), bias.clone().requires_grad_()
    ref = R.bias_gelu(hg, bg)
    grad_target = state.target(0, Slot.PRE_GELU_GRAD)

    def torch_gelu_bwd8():
        dh, db = torch.autograd.grad(ref, (hg, bg), g4, retain_graph=True)
        return torch_cast(dh, E5M2), db

    both("bias+gelu bwd + e5m2 copy", lambda: K.bias_gelu_backward(g4, h, bias, grad_target), torch_gelu_bwd8,
         28 * N * C)


def _classifier_rows(both, C: int, V: int, Vp: int, N: int, bf: dict) -> None:
    """The classifier kernel alone (softmax, loss and dlogits in place), then the whole fused classifier with
    its GEMMs, forward + backward, its weight gradient summed over the 16K-token chunks in fp32 and in bf16:
    what the fp32 sum costs, per micro-batch."""
    from gpt2pipe.ops import autograd as K
    from gpt2pipe.ops.cuda import launch

    n_cls = min(N, 8192)
    logits = torch.randn(n_cls, Vp, **bf)
    tgt = torch.randint(0, V, (n_cls,), device="cuda")
    losses = torch.empty(n_cls, device="cuda")
    work = logits.clone()

    def ours_cls():
        work.copy_(logits)  # the kernel writes in place; the copy is timed on both sides
        launch("classifier", "fused_classifier", n_cls, 1024, logits=work, losses=losses, targets=tgt, V=V, Vp=Vp,
               dscale=1.0 / n_cls, write_grad=1)

    lg = logits.clone().requires_grad_()

    def ref_cls():
        loss = torch.nn.functional.cross_entropy(lg[:, :V].float(), tgt)
        torch.autograd.grad(loss, lg)

    both(f"softmax+xent+dlogits ({n_cls} tokens)", ours_cls, ref_cls, 2 * 2 * n_cls * Vp + 2 * 2 * n_cls * Vp)
    h = (torch.randn(N, C, **bf)).requires_grad_()
    w = (torch.randn(Vp, C, **bf) * 0.02).requires_grad_()
    t = torch.randint(0, V, (N,), device="cuda")

    def fused(fp32: bool):
        def call():
            old, K.FusedClassifier.dw_fp32 = K.FusedClassifier.dw_fp32, fp32
            try:
                torch.autograd.grad(K.FusedClassifier.apply(h, w, t, V, True), (h, w))
            finally:
                K.FusedClassifier.dw_fp32 = old
        return call

    def torch_classifier():  # the model's torch path: bf16 logits, fp32 cross-entropy over the real columns
        logits = torch.nn.functional.linear(h, w)[:, :V]
        torch.autograd.grad(torch.nn.functional.cross_entropy(logits.float(), t), (h, w))

    nbytes = 2 * (N * C + Vp * C) * 2 + 2 * N * Vp * 2  # h, W in, dh, dW out; logits written and read
    chunks = math.ceil(N / K.CLASSIFIER_CHUNK)
    for fp32 in (True, False):
        both(f"classifier fwd+bwd with GEMMs, dW summed in {'fp32' if fp32 else 'bf16'} over {chunks} x "
             f"{K.CLASSIFIER_CHUNK} tokens", fused(fp32), torch_classifier, nbytes)


def _arch_rows(both, N: int, C: int, n_head: int, bf: dict) -> None:
    """The LLaMA-style ops (ops/arch.py) at this width, forward and backward against autograd of their torch
    references: each op as the model calls it (16-byte kernels), then at a width that is not a multiple of
    16 bytes (the scalar kernels). The fp32 instances are the same templates and are not timed apart."""
    from gpt2pipe.ops import arch as A
    from gpt2pipe.ops import reference as R

    def fwd_bwd(name, ours, ref, inputs, nbytes_fwd, nbytes_bwd):
        both(f"{name} fwd", lambda: ours(*inputs), lambda: ref(*inputs), nbytes_fwd)
        grads = [t.clone().requires_grad_() if t.dtype.is_floating_point else t for t in inputs]
        leaves = [t for t in grads if t.requires_grad]
        o, r = ours(*grads), ref(*grads)
        o, r = (o if isinstance(o, tuple) else (o,)), (r if isinstance(r, tuple) else (r,))
        seeds = tuple(torch.randn_like(t) for t in o)
        both(f"{name} bwd", grad_of(o, leaves, seeds), grad_of(r, leaves, seeds), nbytes_bwd)

    for width, note in ((C, ""), (C + 4, " (scalar fallback)")):
        x, r, w = torch.randn(N, width, **bf), torch.randn(N, width, **bf), torch.rand(width, **bf) + 0.5
        fwd_bwd(f"rmsnorm{note}", A.rmsnorm, R.rmsnorm, (x, w), 4 * N * width, 6 * N * width)
        fwd_bwd(f"residual+rmsnorm{note}", A.residual_rmsnorm, R.residual_rmsnorm, (r, x, w), 8 * N * width,
                8 * N * width)
        F = 4 * width + (1 if note else 0)  # an odd hidden width takes the scalar kernels
        h2 = torch.randn(N, 2 * F, **bf)
        fwd_bwd(f"swiglu{note}", A.swiglu, R.swiglu, (h2,), 6 * N * F, 10 * N * F)
        h = torch.randn(N - (1 if note else 0), F, **bf)  # relu2 vectorises on the element count
        fwd_bwd(f"relu2{note}", A.relu2, R.relu2, (h,), 4 * h.numel(), 6 * h.numel())
    T = min(1024, N)
    D = C // n_head
    qkv = torch.randn(N // T, T, 3 * C, **bf)
    cos, sin = R.rope_tables(T, D, device="cuda")
    fwd_bwd("qk-norm + rope (packed qkv -> q, k, v)", lambda t: A.qkv_rope(t, n_head, n_head, cos, sin, True),
            lambda t: R.qkv_rope(t, n_head, n_head, cos, sin, True), (qkv,), 4 * 3 * N * C, 6 * 3 * N * C)


def kernel_table(cfg: ModelConfig, tokens: int = 65536) -> list[tuple[str, float, float, float]]:
    """(name, our µs, torch µs, bytes moved) for each op at GPT-2 shapes over `tokens` tokens (torch µs is
    nan where the reference ran out of memory)."""
    from gpt2pipe.ops import autograd as K
    from gpt2pipe.ops import reference as R
    from gpt2pipe.ops.cuda import launch, sm_count
    from gpt2pipe.ops.flat_adamw import FlatAdamW

    torch.manual_seed(0)
    C, V, Vp, T = cfg.n_embd, cfg.vocab_size, cfg.padded_vocab_size, min(1024, cfg.block_size)
    N = tokens
    bf = dict(device="cuda", dtype=torch.bfloat16)
    rows = []

    def both(name, ours, ref, nbytes):
        ours_us = time_us(ours)
        try:
            ref_us = time_us(ref)
        except torch.cuda.OutOfMemoryError:
            ref_us = float("nan")
            torch.cuda.empty_cache()
        rows.append((name, ours_us, ref_us, nbytes))

    # encoder
    idx = torch.randint(0, V, (N // T, T), device="cuda")
    wte, wpe = torch.randn(Vp, C, **bf), torch.randn(T, C, **bf)
    enc_bytes = 8 * N + 6 * N * C
    both("encoder fwd", lambda: K.Encoder.apply(idx, wte, wpe), lambda: R.encoder(idx, wte, wpe), enc_bytes)
    enc_out = torch.empty(N // T, T, C, **bf)
    both("encoder fwd (scalar fallback)",
         lambda: launch("encoder", "encoder_forward", K._blocks(N * C), 256, enc_out, idx, wte, wpe, N, T, C),
         lambda: R.encoder(idx, wte, wpe), enc_bytes)
    wte_g, wpe_g = wte.clone().requires_grad_(), wpe.clone().requires_grad_()
    enc, enc_ref = K.Encoder.apply(idx, wte_g, wpe_g), R.encoder(idx, wte_g, wpe_g)
    d_enc = torch.randn(N // T, T, C, **bf)
    both("encoder bwd (sort, wte, wpe)", grad_of(enc, (wte_g, wpe_g), d_enc), grad_of(enc_ref, (wte_g, wpe_g), d_enc),
         2 * N * C + 2 * 2 * (Vp + T) * C)

    # LayerNorm, with and without the residual add, vectorised and scalar
    x, r = torch.randn(N, C, **bf), torch.randn(N, C, **bf)
    w, b = torch.randn(C, **bf), torch.randn(C, **bf)
    both("layernorm fwd", lambda: K.LayerNorm.apply(x, w, b), lambda: R.layernorm(x, w, b, K.EPS), 4 * N * C)
    xg, wg, bg = (t.clone().requires_grad_() for t in (x, w, b))
    g = torch.randn(N, C, **bf)
    both("layernorm bwd", grad_of(K.LayerNorm.apply(xg, wg, bg), (xg, wg, bg), g),
         grad_of(R.layernorm(xg, wg, bg, K.EPS), (xg, wg, bg), g), 6 * N * C)
    both("residual+layernorm fwd", lambda: K.ResidualLayerNorm.apply(r, x, w, b),
         lambda: R.residual_layernorm(r, x, w, b), 8 * N * C)
    xg, rg, wg, bg = (t.clone().requires_grad_() for t in (x, r, w, b))
    res, out = K.ResidualLayerNorm.apply(rg, xg, wg, bg)
    res_r, out_r = R.residual_layernorm(rg, xg, wg, bg)
    both("residual+layernorm bwd", grad_of((res, out), (rg, xg, wg, bg), (g, g)),
         grad_of((res_r, out_r), (rg, xg, wg, bg), (g, g)), 8 * N * C)
    ln_out, res_out = torch.empty(N, C, **bf), torch.empty(N, C, **bf)
    mean, rstd = torch.empty(N, device="cuda"), torch.empty(N, device="cuda")
    both("residual+layernorm fwd (scalar fallback)",
         lambda: launch("layernorm", "layernorm_forward", (N + 7) // 8, 256, ln_out, mean, rstd, res_out, x, r, w, b,
                        N, C, K.EPS),
         lambda: R.residual_layernorm(r, x, w, b), 8 * N * C)
    _, mean, rstd, res_in, _ = K._ln_forward(x, r, w, b)
    grid = max(1, min((N + 3) // 4, sm_count() * 8))
    dx, partials = torch.empty(N, C, **bf), torch.empty(grid, 2 * C, device="cuda")
    both("residual+layernorm bwd (scalar fallback)",
         lambda: launch("layernorm", "layernorm_backward", grid, 128, dx, partials, g, g, res_in, mean, rstd, w, N, C,
                        shared_mem=4 * 2 * C * 4),
         grad_of((res_r, out_r), (rg, xg, wg, bg), (g, g)), 8 * N * C)

    # bias + GELU, vectorised and scalar, and the bias gradient
    h, bias = torch.randn(N, 4 * C, **bf), torch.randn(4 * C, **bf)
    both("bias+gelu fwd", lambda: K.BiasGelu.apply(h, bias), lambda: R.bias_gelu(h, bias), 16 * N * C)
    hg, biasg = h.clone().requires_grad_(), bias.clone().requires_grad_()
    o1, o2 = K.BiasGelu.apply(hg, biasg), R.bias_gelu(hg, biasg)
    g4 = torch.randn(N, 4 * C, **bf)
    both("bias+gelu bwd", grad_of(o1, (hg, biasg), g4), grad_of(o2, (hg, biasg), g4), 24 * N * C)
    (sgrid, sthreads), gelu_out = _gelu_grid(N, 4 * C, vec=False), torch.empty(N, 4 * C, **bf)
    both("bias+gelu fwd (scalar fallback)",
         lambda: launch("gelu", "bias_gelu_forward", sgrid, sthreads, out=gelu_out, h=h, bias=bias, N=N, C=4 * C),
         lambda: R.bias_gelu(h, bias), 16 * N * C)
    gelu_partials = torch.empty(sgrid[1], 4 * C, device="cuda")
    both("bias+gelu bwd (scalar fallback)",
         lambda: launch("gelu", "bias_gelu_backward", sgrid, sthreads, dh=gelu_out, partials=gelu_partials, dout=g4,
                        h=h, bias=bias, N=N, C=4 * C),
         grad_of(o2, (hg, biasg), g4), 24 * N * C)
    dy = torch.randn(N, 3 * C, **bf)
    both("bias grad (qkv, column sums)", lambda: K.bias_grad(dy), lambda: dy.sum(0), 2 * N * 3 * C)

    _arch_rows(both, N, C, cfg.n_head, bf)
    _classifier_rows(both, C, V, Vp, N, bf)
    if torch.cuda.get_device_capability() >= FP8_CAPABILITY:
        _fp8_rows(both, N, C, bf)

    # the optimizer: global norm (and clip factor), then AdamW with fp32 master weights
    from gpt2pipe.model.gpt import GPT

    model = GPT(cfg).cuda()
    ref_params = [p.detach().clone() for p in model.parameters()]
    for p in ref_params:
        p.grad = torch.randn_like(p) * 1e-3
    flat = FlatAdamW(model, lr=1e-4)
    flat.grads.normal_(0, 1e-3)
    torch_opt = torch.optim.AdamW(ref_params, lr=1e-4, fused=True)
    n = flat.grads.numel()
    both("global norm + clip factor", flat.grad_norm, lambda: torch.nn.utils.clip_grad_norm_(ref_params, 1.0), 2 * n)
    both("AdamW (fp32 master weights)", lambda: flat.step(1e-4, norm_ready=True), torch_opt.step, 30 * n)
    return rows


def format_table(rows: list[tuple[str, float, float, float]], tokens: int = 65536) -> list[str]:
    """The per-op table as markdown lines."""
    name = torch.cuda.get_device_name()
    bandwidth = next((v for k, v in COPY_BANDWIDTH.items() if k in name), None)
    lines = [f"| op, {tokens} tokens (one B=64 micro-batch), per call incl. launch | ours µs | torch µs | speedup "
             "| ours GB/s | of copy bandwidth |", "|---|---:|---:|---:|---:|---:|"]
    for op, ours, ref, nbytes in rows:
        gbs = nbytes / (ours * 1e-6) / 1e9
        frac = f"{100 * gbs * 1e9 / bandwidth:.0f}%" if bandwidth else "-"
        speedup = f"{ref / ours:.2f}x" if math.isfinite(ref) else "-"
        torch_us = f"{ref:.1f}" if math.isfinite(ref) else "out of memory"
        lines.append(f"| {op} | {ours:.1f} | {torch_us} | {speedup} | {gbs:,.0f} | {frac} |")
    return lines
