"""`gpt2pipe bench`'s per-op table: every kernel we own against its torch reference at GPT-2 shapes.

Times are per call as the model makes it (autograd and launch overhead included), median of CUDA-event
timings after a warm-up; bytes are the least the op must move, so ours GB/s against the device's copy
bandwidth says how close a memory-bound kernel is to its limit. dev/kernels/ has the per-version detail.
"""

from __future__ import annotations

import statistics

import torch

from gpt2pipe.config import ModelConfig

COPY_BANDWIDTH = {"H100": 3.0e12, "H200": 4.3e12}  # measured device-to-device copy (read + write), bytes/s


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


def _fp8_rows(both, N: int, C: int, bf: dict) -> None:
    """The fp8 casts (H100 and later): activation/gradient casts, the amax pass and the weight copies."""
    from gpt2pipe.ops.fp8 import E4M3, E5M2, Fp8State, Slot

    state = Fp8State(1, torch.device("cuda"))
    state.amax_previous.fill_(4.0)
    x = torch.randn(N, 4 * C, **bf)
    target = state.target(0, Slot.GELU_OUTPUT)
    scale = torch.tensor(2.0 ** -6, device="cuda")

    def torch_cast(dtype):
        return lambda: (x.float() * scale).clamp(-448.0, 448.0).to(dtype)

    for name, dtype in (("fp8 cast e4m3", E4M3), ("fp8 cast e5m2", E5M2)):
        both(name, lambda dtype=dtype: target.cast(x, dtype), torch_cast(dtype), 3 * x.numel())
    both("fp8 amax", lambda: target.record_amax(x), lambda: x.abs().amax(), 2 * x.numel())
    w = torch.randn(4 * C, C, **bf) * 0.02
    weight = state.target(0, Slot.FC_WEIGHT)

    def torch_weight():
        s = 224.0 / w.abs().amax().float()
        w8 = (w.float() * s).to(E4M3)
        return w8, w8.t().contiguous()

    both("fp8 weight copies (W, W^T)", lambda: weight.weight_copies(w), torch_weight, 2 * w.numel() + 2 * w.numel())


def kernel_table(cfg: ModelConfig, tokens: int = 65536) -> list[tuple[str, float, float, float]]:
    """(name, our µs, torch µs, bytes moved) for each op at GPT-2 shapes over `tokens` tokens."""
    from gpt2pipe.ops import autograd as K
    from gpt2pipe.ops import reference as R
    from gpt2pipe.ops.cuda import launch
    from gpt2pipe.ops.flat_adamw import FlatAdamW

    torch.manual_seed(0)
    C, V, Vp, T = cfg.n_embd, cfg.vocab_size, cfg.padded_vocab_size, 1024
    N = tokens
    bf = dict(device="cuda", dtype=torch.bfloat16)
    rows = []

    def both(name, ours, ref, nbytes):
        rows.append((name, time_ms(ours) * 1e3, time_ms(ref) * 1e3, nbytes))

    def grad_of(out, inputs, seed):
        return lambda: torch.autograd.grad(out, inputs, seed, retain_graph=True)

    idx = torch.randint(0, V, (N // T, T), device="cuda")
    wte, wpe = torch.randn(Vp, C, **bf), torch.randn(T, C, **bf)
    both("encoder fwd", lambda: K.Encoder.apply(idx, wte, wpe), lambda: R.encoder(idx, wte, wpe), 8 * N + 6 * N * C)
    wte_g, wpe_g = wte.clone().requires_grad_(), wpe.clone().requires_grad_()
    enc, enc_ref = K.Encoder.apply(idx, wte_g, wpe_g), R.encoder(idx, wte_g, wpe_g)
    d_enc = torch.randn(N // T, T, C, **bf)
    both("encoder bwd", grad_of(enc, (wte_g, wpe_g), d_enc), grad_of(enc_ref, (wte_g, wpe_g), d_enc),
         2 * N * C + 2 * 2 * (Vp + T) * C)
    x, r = torch.randn(N, C, **bf), torch.randn(N, C, **bf)
    w, b = torch.randn(C, **bf), torch.randn(C, **bf)
    both("residual+layernorm fwd", lambda: K.ResidualLayerNorm.apply(r, x, w, b),
         lambda: R.residual_layernorm(r, x, w, b), 8 * N * C)
    xg, rg, wg, bg = (t.clone().requires_grad_() for t in (x, r, w, b))
    res, out = K.ResidualLayerNorm.apply(rg, xg, wg, bg)
    res_r, out_r = R.residual_layernorm(rg, xg, wg, bg)
    g = torch.randn(N, C, **bf)
    both("residual+layernorm bwd", grad_of((res, out), (rg, xg, wg, bg), (g, g)),
         grad_of((res_r, out_r), (rg, xg, wg, bg), (g, g)), 8 * N * C)
    h, bias = torch.randn(N, 4 * C, **bf), torch.randn(4 * C, **bf)
    both("bias+gelu fwd", lambda: K.BiasGelu.apply(h, bias), lambda: R.bias_gelu(h, bias), 16 * N * C)
    hg, biasg = h.clone().requires_grad_(), bias.clone().requires_grad_()
    o1, o2 = K.BiasGelu.apply(hg, biasg), R.bias_gelu(hg, biasg)
    g4 = torch.randn(N, 4 * C, **bf)
    both("bias+gelu bwd", grad_of(o1, (hg, biasg), g4), grad_of(o2, (hg, biasg), g4), 24 * N * C)
    dy = torch.randn(N, 3 * C, **bf)
    both("bias grad (qkv, column sums)", lambda: K.bias_grad(dy), lambda: dy.sum(0), 2 * N * 3 * C)
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

    both("softmax+xent+dlogits", ours_cls, ref_cls, 2 * 2 * n_cls * Vp + 2 * 2 * n_cls * Vp)
    if torch.cuda.get_device_capability() >= (8, 9):
        _fp8_rows(both, N, C, bf)
    from gpt2pipe.model.gpt import GPT

    model = GPT(cfg).cuda()
    ref_params = [p.detach().clone() for p in model.parameters()]
    for p in ref_params:
        p.grad = torch.randn_like(p) * 1e-3
    flat = FlatAdamW(model, lr=1e-4)
    flat.grads.normal_(0, 1e-3)
    torch_opt = torch.optim.AdamW(ref_params, lr=1e-4, fused=True)
    n = flat.grads.numel()
    both("global norm + AdamW", lambda: flat.step(1e-4),
         lambda: (torch.nn.utils.clip_grad_norm_(ref_params, 1.0), torch_opt.step()), 30 * n)
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
        lines.append(f"| {op} | {ours:.1f} | {ref:.1f} | {ref / ours:.2f}x | {gbs:,.0f} | {frac} |")
    return lines
