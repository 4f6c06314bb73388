"""`gpt2pipe bench`: one GPU, one process — a full GPT-2 training step three ways, and each kernel alone.

Step table: our kernels vs torch eager vs torch.compile of the same model (bf16 autocast, SDPA, fused
AdamW), each doing the same optimizer step of `total_batch` tokens by gradient accumulation over
micro-batches. Kernel table: each kernel vs its torch reference at GPT-2 124M shapes, with the bytes it
must move and the bandwidth that implies. Synthetic tokens: the data pipeline is not what is timed.
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from dataclasses import dataclass

import torch

from gpt2pipe.config import ModelConfig
from gpt2pipe.model.gpt import GPT, GPT2_SIZES
from gpt2pipe.device import peak_flops

COPY_BANDWIDTH = {"H100": 3.0e12, "H200": 4.3e12}  # measured device-to-device copy (read + write), bytes/s


@dataclass
class StepResult:
    mode: str
    micro_batch: int
    ms: float
    tokens_per_s: float
    tflops: float
    mfu: float | None
    peak_gb: float
    losses: list[float]


def _sdpa_context():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    try:
        return sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION], set_priority=True)
    except TypeError:  # older torch: no priorities
        return sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION])


def time_training_step(mode: str, cfg: ModelConfig, micro_batch: int, seq_len: int, total_batch: int,
                       steps: int, warmup: int, profile: bool = False) -> StepResult:
    from gpt2pipe.config import from_dict
    from gpt2pipe.train.loop import make_flat_optimizer, make_optimizer, optimizer_step

    device = torch.device("cuda")
    torch.manual_seed(0)
    t = from_dict({}).train  # the 124M recipe's optimizer: lr 6e-4, betas 0.9/0.95, decay 0.1, clip 1.0
    kernels = mode.startswith("kernels")
    model = GPT(cfg, ops="kernels" if kernels else "torch", recompute=mode == "kernels-recompute",
                fp8=mode == "kernels-fp8").to(device)
    # the training loop's own optimizers: flat bf16 AdamW for the kernels, fused torch AdamW otherwise
    opt = make_flat_optimizer(model, t) if kernels else make_optimizer(model, t, device)
    amp = contextlib.nullcontext() if kernels else torch.autocast("cuda", dtype=torch.bfloat16)
    runner = torch.compile(model) if mode == "compile" else model
    accum = total_batch // (micro_batch * seq_len)
    data = torch.randint(0, cfg.vocab_size, (accum, micro_batch, seq_len + 1), device=device)
    flops = model.flops_per_token(seq_len) * total_batch
    times, losses = [], []
    torch.cuda.reset_peak_memory_stats()
    with _sdpa_context():
        for i in range(warmup + steps):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            total = torch.zeros((), device=device)
            for k in range(accum):
                with amp:
                    _, loss = runner(data[k, :, :-1], data[k, :, 1:])
                (loss / accum).backward()
                total += loss.detach()
            optimizer_step(opt, model, t.learning_rate, t.grad_clip)
            losses.append((total / accum).item())
            torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    if profile:  # one more step under the profiler: where the time goes, kernel by kernel
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        with _sdpa_context(), torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
            for k in range(accum):
                with amp:
                    _, loss = runner(data[k, :, :-1], data[k, :, 1:])
                (loss / accum).backward()
            optimizer_step(opt, model, t.learning_rate, t.grad_clip)
            torch.cuda.synchronize()
        print(f"## profile of one {mode} step (CUDA time per kernel)")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=70))
    dt = statistics.median(times)
    peak = peak_flops(device)
    result = StepResult(mode, micro_batch, dt * 1e3, total_batch / dt, flops / dt / 1e12,
                        flops / dt / peak if peak else None, torch.cuda.max_memory_allocated() / 2**30, losses)
    del model, opt, runner, data
    gc.collect()
    torch.cuda.empty_cache()
    return result


def _time(fn, reps: int = 20) -> float:
    """Median milliseconds of fn() over reps, timed with CUDA events after a warm-up."""
    for _ in range(3):
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


def kernel_table(cfg: ModelConfig, tokens: int = 65536) -> list[tuple[str, float, float, float]]:
    """(name, our µs, torch µs, bytes moved) for each op at GPT-2 shapes over `tokens` tokens. Times are per
    call as the model makes it (autograd and launch overhead included); bytes are the least the op must move."""
    from gpt2pipe.ops import autograd as K
    from gpt2pipe.ops import reference as R
    from gpt2pipe.ops.cuda import launch
    from gpt2pipe.ops.optim import FlatAdamW

    torch.manual_seed(0)
    C, V, Vp, T = cfg.n_embd, cfg.vocab_size, cfg.padded_vocab_size, 1024
    N = tokens
    bf = dict(device="cuda", dtype=torch.bfloat16)
    rows = []

    def both(name, ours, ref, nbytes):
        rows.append((name, _time(ours) * 1e3, _time(ref) * 1e3, nbytes))

    idx = torch.randint(0, V, (N // T, T), device="cuda")
    wte, wpe = torch.randn(Vp, C, **bf), torch.randn(T, C, **bf)
    both("encoder fwd", lambda: K.Encoder.apply(idx, wte, wpe), lambda: R.encoder(idx, wte, wpe), 8 * N + 6 * N * C)
    x, r = torch.randn(N, C, **bf), torch.randn(N, C, **bf)
    w, b = torch.randn(C, **bf), torch.randn(C, **bf)
    both("residual+layernorm fwd", lambda: K.ResidualLayerNorm.apply(r, x, w, b),
         lambda: R.residual_layernorm(r, x, w, b), 8 * N * C)
    xg, rg, wg, bg = (t.clone().requires_grad_() for t in (x, r, w, b))
    res, out = K.ResidualLayerNorm.apply(rg, xg, wg, bg)
    res_r, out_r = R.residual_layernorm(rg, xg, wg, bg)
    g = torch.randn(N, C, **bf)
    both("residual+layernorm bwd", lambda: torch.autograd.grad((res, out), (rg, xg, wg, bg), (g, g), retain_graph=True),
         lambda: torch.autograd.grad((res_r, out_r), (rg, xg, wg, bg), (g, g), retain_graph=True), 8 * N * C)
    h, bias = torch.randn(N, 4 * C, **bf), torch.randn(4 * C, **bf)
    both("bias+gelu fwd", lambda: K.BiasGelu.apply(h, bias), lambda: R.bias_gelu(h, bias), 16 * N * C)
    hg, biasg = h.clone().requires_grad_(), bias.clone().requires_grad_()
    o1, o2 = K.BiasGelu.apply(hg, biasg), R.bias_gelu(hg, biasg)
    g4 = torch.randn(N, 4 * C, **bf)
    both("bias+gelu bwd", lambda: torch.autograd.grad(o1, (hg, biasg), g4, retain_graph=True),
         lambda: torch.autograd.grad(o2, (hg, biasg), g4, retain_graph=True), 24 * N * C)
    n_cls = min(N, 8192)
    logits = torch.randn(n_cls, Vp, **bf)
    tgt = torch.randint(0, V, (n_cls,), device="cuda")
    losses = torch.empty(n_cls, device="cuda")
    work = logits.clone()

    def ours_cls():
        work.copy_(logits)  # the kernel writes in place; the copy is timed on both sides
        launch("classifier", "fused_classifier", n_cls, 1024, work, losses, tgt, V, Vp, 1.0 / n_cls, 1)

    lg = logits.clone().requires_grad_()

    def ref_cls():
        loss = torch.nn.functional.cross_entropy(lg[:, :V].float(), tgt)
        torch.autograd.grad(loss, lg)

    both("softmax+xent+dlogits", ours_cls, ref_cls, 2 * 2 * n_cls * Vp + 2 * 2 * n_cls * Vp)
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


def run(size: str = "124M", seq_len: int = 1024, total_batch: int = 524288, modes=("kernels", "eager", "compile"),
        micro_batch: dict | None = None, steps: int = 5, warmup: int = 2, kernels: bool = True,
        profile: tuple[str, ...] = ()) -> str:
    cfg = GPT2_SIZES[size]
    micro_batch = {"kernels": 64, "kernels-fp8": 64, "kernels-recompute": 128, "eager": 32, "compile": 64, **(micro_batch or {})}
    name = torch.cuda.get_device_name()
    lines = [f"# gpt2pipe bench on {name}, torch {torch.__version__}, GPT-2 {size}, T={seq_len}, "
             f"{total_batch:,} tokens/step, median of {steps} steps after {warmup} warm-up"]
    results = []
    for mode in modes:
        b = micro_batch[mode]
        while True:
            try:
                results.append(time_training_step(mode, cfg, b, seq_len, total_batch, steps, warmup,
                                                  profile=mode in profile))
                break
            except torch.cuda.OutOfMemoryError:
                gc.collect()
                torch.cuda.empty_cache()
                lines.append(f"# {mode}: micro-batch {b} ran out of memory, trying {b // 2}")
                b //= 2
                if b == 0:
                    raise
        print(f"{mode}: {results[-1].ms:.1f} ms/step, losses {[round(x, 4) for x in results[-1].losses]}", flush=True)
    base = next((r for r in results if r.mode == "compile"), None)
    lines.append("| mode | micro-batch | ms/step | tokens/s | TFLOP/s | MFU | peak GiB | vs torch.compile |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        ratio = f"{base.ms / r.ms:.3f}x" if base else "-"
        mfu = f"{100 * r.mfu:.1f}%" if r.mfu else "-"
        lines.append(f"| {r.mode} | {r.micro_batch} | {r.ms:.1f} | {r.tokens_per_s:,.0f} | {r.tflops:.1f} | {mfu} | "
                     f"{r.peak_gb:.1f} | {ratio} |")
    if kernels:
        bw = next((v for k, v in COPY_BANDWIDTH.items() if k in name), None)
        lines.append("")
        lines.append("| op, 65536 tokens (one B=64 micro-batch), per call incl. launch | ours µs | torch µs | speedup "
                     "| ours GB/s | of copy bandwidth |")
        lines.append("|---|---:|---:|---:|---:|---:|")
        for kname, ours, ref, nbytes in kernel_table(cfg):
            gbs = nbytes / (ours * 1e-6) / 1e9
            frac = f"{100 * gbs * 1e9 / bw:.0f}%" if bw else "-"
            lines.append(f"| {kname} | {ours:.1f} | {ref:.1f} | {ref / ours:.2f}x | {gbs:,.0f} | {frac} |")
    return "\n".join(lines)
