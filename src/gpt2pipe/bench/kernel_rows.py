"""The rows of the per-op table (bench/kernels.py), one function per op family: each times our kernel and its
torch reference through `both(name, ours, torch, bytes moved)`, at the table's N tokens of width C."""

from __future__ import annotations

import math

import torch

from gpt2pipe.bench.timing import grad_of
from gpt2pipe.config import ModelConfig
from gpt2pipe.model.gpt import GPT
from gpt2pipe.ops import arch, classifier
from gpt2pipe.ops import reference as R
from gpt2pipe.ops.classifier import FusedClassifier
from gpt2pipe.ops.cuda import blocks, launch, sm_count
from gpt2pipe.ops.encoder import Encoder
from gpt2pipe.ops.flat_adamw import FlatAdamW
from gpt2pipe.ops.fp8 import E4M3, E5M2, Fp8State, Slot
from gpt2pipe.ops.layernorm import EPS, LayerNorm, ResidualLayerNorm, layernorm_forward
from gpt2pipe.ops.linear import bias_grad, column_grid
from gpt2pipe.ops.mlp import BiasGelu, bias_gelu_backward, bias_gelu_forward


def gpt2_rows(both, N: int, C: int, V: int, Vp: int, T: int, bf: dict) -> None:
    """GPT-2's own kernels as the model runs them (vectorised) and their scalar fallbacks (launched directly at
    the same shapes): the encoder, LayerNorm with and without the residual add, bias+GELU, the bias gradient."""
    # encoder
    idx = torch.randint(0, V, (N // T, T), device="cuda")
    wte, wpe = torch.randn(Vp, C, **bf), torch.randn(T, C, **bf)
    enc_bytes = 8 * N + 6 * N * C
    both("encoder fwd", lambda: Encoder.apply(idx, wte, wpe), lambda: R.encoder(idx, wte, wpe), enc_bytes)
    enc_out = torch.empty(N // T, T, C, **bf)
    both("encoder fwd (scalar fallback)",
         lambda: launch("encoder", "encoder_forward", blocks(N * C), 256, enc_out, idx, wte, wpe, N, T, C),
         lambda: R.encoder(idx, wte, wpe), enc_bytes)
    wte_g, wpe_g = wte.clone().requires_grad_(), wpe.clone().requires_grad_()
    enc, enc_ref = Encoder.apply(idx, wte_g, wpe_g), R.encoder(idx, wte_g, wpe_g)
    d_enc = torch.randn(N // T, T, C, **bf)
    both("encoder bwd (sort, wte, wpe)", grad_of(enc, (wte_g, wpe_g), d_enc), grad_of(enc_ref, (wte_g, wpe_g), d_enc),
         2 * N * C + 2 * 2 * (Vp + T) * C)

    # LayerNorm, with and without the residual add, vectorised and scalar
    x, r = torch.randn(N, C, **bf), torch.randn(N, C, **bf)
    w, b = torch.randn(C, **bf), torch.randn(C, **bf)
    both("layernorm fwd", lambda: LayerNorm.apply(x, w, b), lambda: R.layernorm(x, w, b, EPS), 4 * N * C)
    xg, wg, bg = (t.clone().requires_grad_() for t in (x, w, b))
    g = torch.randn(N, C, **bf)
    both("layernorm bwd", grad_of(LayerNorm.apply(xg, wg, bg), (xg, wg, bg), g),
         grad_of(R.layernorm(xg, wg, bg, EPS), (xg, wg, bg), g), 6 * N * C)
    both("residual+layernorm fwd", lambda: ResidualLayerNorm.apply(r, x, w, b),
         lambda: R.residual_layernorm(r, x, w, b), 8 * N * C)
    xg, rg, wg, bg = (t.clone().requires_grad_() for t in (x, r, w, b))
    res, out = ResidualLayerNorm.apply(rg, xg, wg, bg)
    res_r, out_r = R.residual_layernorm(rg, xg, wg, bg)
    both("residual+layernorm bwd", grad_of((res, out), (rg, xg, wg, bg), (g, g)),
         grad_of((res_r, out_r), (rg, xg, wg, bg), (g, g)), 8 * N * C)
    ln_out, res_out = torch.empty(N, C, **bf), torch.empty(N, C, **bf)
    mean, rstd = torch.empty(N, device="cuda"), torch.empty(N, device="cuda")
    both("residual+layernorm fwd (scalar fallback)",
         lambda: launch("layernorm", "layernorm_forward", (N + 7) // 8, 256, ln_out, mean, rstd, res_out, x, r, w, b,
                        N, C, EPS),
         lambda: R.residual_layernorm(r, x, w, b), 8 * N * C)
    _, mean, rstd, res_in, _ = layernorm_forward(x, r, w, b)
    grid = max(1, min((N + 3) // 4, sm_count() * 8))
    dx, partials = torch.empty(N, C, **bf), torch.empty(grid, 2 * C, device="cuda")
    both("residual+layernorm bwd (scalar fallback)",
         lambda: launch("layernorm", "layernorm_backward", grid, 128, dx, partials, g, g, res_in, mean, rstd, w, N, C,
                        shared_mem=4 * 2 * C * 4),
         grad_of((res_r, out_r), (rg, xg, wg, bg), (g, g)), 8 * N * C)

    # bias + GELU, vectorised and scalar, and the bias gradient
    h, bias = torch.randn(N, 4 * C, **bf), torch.randn(4 * C, **bf)
    both("bias+gelu fwd", lambda: BiasGelu.apply(h, bias), lambda: R.bias_gelu(h, bias), 16 * N * C)
    hg, biasg = h.clone().requires_grad_(), bias.clone().requires_grad_()
    o1, o2 = BiasGelu.apply(hg, biasg), R.bias_gelu(hg, biasg)
    g4 = torch.randn(N, 4 * C, **bf)
    both("bias+gelu bwd", grad_of(o1, (hg, biasg), g4), grad_of(o2, (hg, biasg), g4), 24 * N * C)
    (sgrid, sthreads), gelu_out = column_grid(N, 4 * C, vec=False), torch.empty(N, 4 * C, **bf)
    both("bias+gelu fwd (scalar fallback)",
         lambda: launch("gelu", "bias_gelu_forward", sgrid, sthreads, out=gelu_out, h=h, bias=bias, N=N, C=4 * C),
         lambda: R.bias_gelu(h, bias), 16 * N * C)
    gelu_partials = torch.empty(sgrid[1], 4 * C, device="cuda")
    both("bias+gelu bwd (scalar fallback)",
         lambda: launch("gelu", "bias_gelu_backward", sgrid, sthreads, dh=gelu_out, partials=gelu_partials, dout=g4,
                        h=h, bias=bias, N=N, C=4 * C),
         grad_of(o2, (hg, biasg), g4), 24 * N * C)
    dy = torch.randn(N, 3 * C, **bf)
    both("bias grad (qkv, column sums)", lambda: bias_grad(dy), lambda: dy.sum(0), 2 * N * 3 * C)


def arch_rows(both, N: int, C: int, n_head: int, bf: dict) -> None:
    """The LLaMA-style ops (ops/arch.py) at this width, forward and backward against autograd of their torch
    references: each op as the model calls it (16-byte kernels), then at a width that is not a multiple of
    16 bytes (the scalar kernels). The fp32 instances are the same templates and are not timed apart."""

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
        fwd_bwd(f"rmsnorm{note}", arch.rmsnorm, R.rmsnorm, (x, w), 4 * N * width, 6 * N * width)
        fwd_bwd(f"residual+rmsnorm{note}", arch.residual_rmsnorm, R.residual_rmsnorm, (r, x, w), 8 * N * width,
                8 * N * width)
        F = 4 * width + (1 if note else 0)  # an odd hidden width takes the scalar kernels
        h2 = torch.randn(N, 2 * F, **bf)
        fwd_bwd(f"swiglu{note}", arch.swiglu, R.swiglu, (h2,), 6 * N * F, 10 * N * F)
        h = torch.randn(N - (1 if note else 0), F, **bf)  # relu2 vectorises on the element count
        fwd_bwd(f"relu2{note}", arch.relu2, R.relu2, (h,), 4 * h.numel(), 6 * h.numel())
    T = min(1024, N)
    D = C // n_head
    qkv = torch.randn(N // T, T, 3 * C, **bf)
    cos, sin = R.rope_tables(T, D, device="cuda")
    fwd_bwd("qk-norm + rope (packed qkv -> q, k, v)", lambda t: arch.qkv_rope(t, n_head, n_head, cos, sin, True),
            lambda t: R.qkv_rope(t, n_head, n_head, cos, sin, True), (qkv,), 4 * 3 * N * C, 6 * 3 * N * C)


def classifier_rows(both, C: int, V: int, Vp: int, N: int, bf: dict) -> None:
    """The classifier kernel alone (softmax, loss and dlogits in place), then the whole fused classifier with
    its GEMMs, forward + backward, its weight gradient summed over the 16K-token chunks in fp32 and in bf16:
    what the fp32 sum costs, per micro-batch."""

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
            old, FusedClassifier.dw_fp32 = FusedClassifier.dw_fp32, fp32
            try:
                torch.autograd.grad(FusedClassifier.apply(h, w, t, V, True), (h, w))
            finally:
                FusedClassifier.dw_fp32 = old
        return call

    def torch_classifier():  # the model's torch path: bf16 logits, fp32 cross-entropy over the real columns
        logits = torch.nn.functional.linear(h, w)[:, :V]
        torch.autograd.grad(torch.nn.functional.cross_entropy(logits.float(), t), (h, w))

    nbytes = 2 * (N * C + Vp * C) * 2 + 2 * N * Vp * 2  # h, W in, dh, dW out; logits written and read
    chunks = math.ceil(N / classifier.CLASSIFIER_CHUNK)
    for fp32 in (True, False):
        both(f"classifier fwd+bwd with GEMMs, dW summed in {'fp32' if fp32 else 'bf16'} over {chunks} x "
             f"{classifier.CLASSIFIER_CHUNK} tokens", fused(fp32), torch_classifier, nbytes)


def fp8_rows(both, N: int, C: int, bf: dict) -> None:
    """The fp8 kernels (H100 and later): the casts, the amax pass, the weight copies, and the LayerNorm and
    bias+GELU kernels that write an fp8 copy of their output on the way (against bf16 op + torch cast)."""

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

    both("residual+layernorm fwd + e4m3 copy", lambda: layernorm_forward(xs, r, lw, lb, ln_target), torch_ln8,
         9 * N * C)
    h, bias = torch.randn(N, 4 * C, **bf), torch.randn(4 * C, **bf)
    both("bias+gelu fwd + e4m3 copy", lambda: bias_gelu_forward(h, bias, target),
         lambda: torch_cast(R.bias_gelu(h, bias), E4M3), 18 * N * C)
    g4 = torch.randn(N, 4 * C, **bf)
    hg, bg = h.clone().requires_grad_(), bias.clone().requires_grad_()
    ref = R.bias_gelu(hg, bg)
    for gradients in ("e4m3", "e5m2"):  # train.fp8_gradients: one kernel each
        grad_state = Fp8State(1, torch.device("cuda"), gradients)
        grad_state.amax_previous.fill_(4.0)
        grad_target = grad_state.target(0, Slot.PRE_GELU_GRAD)

        def torch_gelu_bwd8(dtype=grad_target.dtype):
            dh, db = torch.autograd.grad(ref, (hg, bg), g4, retain_graph=True)
            return torch_cast(dh, dtype), db

        both(f"bias+gelu bwd + {gradients} copy", lambda t=grad_target: bias_gelu_backward(g4, h, bias, t),
             torch_gelu_bwd8, 28 * N * C)


def optimizer_rows(both, cfg: ModelConfig) -> None:
    """The optimizer: global norm (and clip factor), then AdamW with fp32 master weights."""
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
