"""Each CUDA kernel against its torch reference (GPU), and an NVRTC compile of every source (CPU too)."""

import pytest
import torch

from gpt2pipe.config import ModelConfig
from gpt2pipe.model.gpt import GPT
from gpt2pipe.ops import autograd as K
from gpt2pipe.ops import reference as R

cupy = pytest.importorskip("cupy", reason="CuPy is not installed")
gpu = pytest.mark.gpu


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def test_every_kernel_source_compiles_with_nvrtc():
    from gpt2pipe.ops import cuda

    sources = cuda.sources()
    assert {p.stem for p in sources} >= {"encoder", "layernorm", "gelu", "classifier", "adamw", "global_norm",
                                         "bias_grad", "fp8"}
    for path in sources:
        cuda.compile_check(path)


def test_broken_kernel_fails_the_compile_check(tmp_path):
    from gpt2pipe import Gpt2pipeError
    from gpt2pipe.ops import cuda

    bad = tmp_path / "bad.cu"
    bad.write_text('#include "common.cuh"\nextern "C" __global__ void k(bf16* x) { x[0] = undefined_name; }\n')
    with pytest.raises(Gpt2pipeError, match="undefined_name"):
        cuda.compile_check(bad)


def leaf(*shape, scale=1.0, dtype=torch.bfloat16):
    return (torch.randn(*shape, device="cuda") * scale).to(dtype).requires_grad_()


def grads_of(out, inputs, seed_grad):
    return torch.autograd.grad(out, inputs, seed_grad)


@gpu
@pytest.mark.parametrize("B,T,C,V", [(4, 64, 768, 50304), (3, 37, 100, 1000), (1, 1, 8, 16)])
def test_encoder(B, T, C, V):
    torch.manual_seed(0)
    idx = torch.randint(0, V, (B, T), device="cuda")
    idx[0, :3] = 5  # repeated tokens exercise the per-token sums
    wte, wpe = leaf(V, C), leaf(T + 3, C)
    out = K.Encoder.apply(idx, wte, wpe)
    ref = R.encoder(idx, wte.float(), wpe.float())
    assert rel(out, ref) < 1e-2
    g = torch.randn_like(out)
    d_ours = grads_of(out, (wte, wpe), g)
    d_ref = grads_of(ref, (wte, wpe), g.float())
    for a, b in zip(d_ours, d_ref):
        assert rel(a, b) < 1e-2
    again = grads_of(K.Encoder.apply(idx, wte, wpe), (wte, wpe), g)
    assert all(torch.equal(a, b) for a, b in zip(d_ours, again))  # deterministic backward


@gpu
@pytest.mark.parametrize("N,C", [(8192, 768), (77, 100), (5, 1600), (1, 32)])
def test_layernorm_with_and_without_residual(N, C):
    torch.manual_seed(0)
    x, r = leaf(N, C), leaf(N, C, scale=3.0)
    w, b = leaf(C, scale=0.5), leaf(C, scale=0.5)
    out = K.LayerNorm.apply(x, w, b)
    ref = R.layernorm(x.float(), w.float(), b.float())
    assert rel(out, ref) < 1e-2
    g = torch.randn_like(out)
    for a, c in zip(grads_of(out, (x, w, b), g), grads_of(ref, (x, w, b), g.float())):
        assert rel(a, c) < 2e-2
    res, out = K.ResidualLayerNorm.apply(r, x, w, b)
    res_ref, out_ref = R.residual_layernorm(r.float(), x.float(), w.float(), b.float())
    assert rel(res, res_ref) < 1e-2 and rel(out, out_ref) < 1e-2
    g1, g2 = torch.randn_like(res), torch.randn_like(out)
    ours = torch.autograd.grad((res, out), (r, x, w, b), (g1, g2))
    refs = torch.autograd.grad((res_ref, out_ref), (r, x, w, b), (g1.float(), g2.float()))
    for a, c in zip(ours, refs):
        assert rel(a, c) < 2e-2


@gpu
@pytest.mark.parametrize("N,C", [(4096, 3072), (33, 300), (1, 7)])
def test_bias_gelu(N, C):
    torch.manual_seed(0)
    h, bias = leaf(N, C, scale=2.0), leaf(C)
    out = K.BiasGelu.apply(h, bias)
    ref = R.bias_gelu(h.float(), bias.float())
    assert rel(out, ref) < 1e-2
    g = torch.randn_like(out)
    for a, c in zip(grads_of(out, (h, bias), g), grads_of(ref, (h, bias), g.float())):
        assert rel(a, c) < 2e-2


@gpu
@pytest.mark.parametrize("N,C_in,C", [(4096, 768, 2304), (33, 24, 40), (5, 7, 9)])
def test_linear_bias_grad(N, C_in, C):
    torch.manual_seed(0)
    x, w, b = leaf(N, C_in), leaf(C, C_in, scale=0.1), leaf(C)
    out = K.LinearBias.apply(x, w, b)
    ref = torch.nn.functional.linear(x.float(), w.float(), b.float())
    assert rel(out, ref) < 1e-2
    g = torch.randn_like(out)
    for a, c in zip(grads_of(out, (x, w, b), g), grads_of(ref, (x, w, b), g.float())):
        assert rel(a, c) < 2e-2


@gpu
@pytest.mark.parametrize("N,C,V,Vp", [(4096, 768, 50257, 50304), (37, 64, 1001, 1008), (1, 16, 8, 8)])
def test_fused_classifier(N, C, V, Vp, monkeypatch):
    monkeypatch.setattr(K, "CLASSIFIER_CHUNK", 1024)  # several chunks even at test sizes
    torch.manual_seed(0)
    h, w = leaf(N, C), leaf(Vp, C, scale=0.1)
    t = torch.randint(0, V, (N,), device="cuda")
    loss = K.FusedClassifier.apply(h, w, t, V, True)
    ref = R.classifier(h.float(), w.float(), t, V)
    assert abs(loss.item() - ref.item()) / ref.item() < 5e-3
    ours = torch.autograd.grad(loss * 0.5, (h, w))
    refs = torch.autograd.grad(ref * 0.5, (h, w))
    for a, c in zip(ours, refs):
        assert rel(a, c) < 3e-2
    assert ours[1][V:].abs().sum() == 0  # padded rows get no gradient
    with torch.no_grad():
        assert K.fused_classifier(h, w, t, V).item() == pytest.approx(loss.item(), rel=1e-6)


@gpu
def test_global_norm_and_adamw_match_reference():
    from gpt2pipe.ops.optim import FlatAdamW

    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=64, block_size=32)).cuda()
    opt = FlatAdamW(model, lr=1e-3, grad_clip=1.0, stochastic_rounding=False)
    ref = {k: getattr(opt, k).clone() for k in ("params", "master", "m", "v")}
    for step in range(1, 4):
        opt.grads.copy_(torch.randn_like(opt.grads, dtype=torch.float32) * 0.01)
        grads = opt.grads.clone()
        norm = opt.step(1e-3)
        clip = R.global_norm_scale(grads, 1.0)
        assert norm.item() == pytest.approx(clip[0].item(), rel=1e-4)
        R.adamw_update(ref["params"], ref["master"], ref["m"], ref["v"], grads, clip, opt.n_decay, 1e-3,
                       0.9, 0.95, step, 1e-8, 0.1)
        for k in ref:
            assert rel(getattr(opt, k), ref[k]) < 1e-5, k


@gpu
def test_stochastic_rounding_is_unbiased_and_seeded():
    from gpt2pipe.ops.optim import FlatAdamW

    lin = torch.nn.Linear(4096, 256, bias=False).cuda()
    a = FlatAdamW(lin, lr=1e-4, weight_decay=0.0, grad_clip=0.0, stochastic_rounding=True, seed=1)
    a.grads.fill_(1e-3)
    a.step()
    err = (a.params.float() - a.master)
    assert err.abs().max() > 0 and abs(err.mean().item()) < 1e-3 * err.abs().mean().item() + 1e-7


@gpu
def test_training_steps_with_kernels_match_the_torch_reference():
    from gpt2pipe.train.loop import make_flat_optimizer, make_optimizer, optimizer_step
    from gpt2pipe.config import from_dict

    t = from_dict({"train": {"learning_rate": 1e-3, "warmup_steps": 0, "stochastic_rounding": False}}).train
    cfg = ModelConfig(n_layer=2, n_head=4, n_embd=128, block_size=64)
    torch.manual_seed(0)
    ref = GPT(cfg).cuda()
    ours = GPT(cfg, ops="kernels").cuda()
    ours.load_state_dict(ref.state_dict())
    opt_ref, opt_ours = make_optimizer(ref, t, torch.device("cuda")), make_flat_optimizer(ours, t)
    data = torch.randint(0, 50257, (10, 8, 65), device="cuda")
    for step in range(10):
        x, y = data[step, :, :-1], data[step, :, 1:]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            l_ref = ref(x, y)[1]
        l_ref.backward()
        l_ours = ours(x, y)[1]
        l_ours.backward()
        n_ref = optimizer_step(opt_ref, ref, 1e-3, 1.0)
        n_ours = optimizer_step(opt_ours, ours, 1e-3, 1.0)
        assert l_ours.item() == pytest.approx(l_ref.item(), rel=2e-2), step
        assert n_ours.item() == pytest.approx(n_ref.item(), rel=5e-2), step


@gpu
def test_recompute_gives_the_same_gradients():
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_head=4, n_embd=128, block_size=64)
    a = GPT(cfg, ops="kernels").cuda().bfloat16()
    b = GPT(cfg, ops="kernels", recompute=True).cuda().bfloat16()
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, 50257, (4, 64), device="cuda")
    la, lb = a(x, x)[1], b(x, x)[1]
    la.backward()
    lb.backward()
    assert la.item() == lb.item()
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(a.parameters(), b.parameters()))


@gpu
def test_kernels_training_resumes_bit_exactly(tmp_path, monkeypatch):
    """The CLI's training loop on the kernels path: a crash and --resume reproduce the uninterrupted run."""
    from conftest import build_shards, crash_then_resume, tiny_config

    from gpt2pipe import config
    from gpt2pipe.model import checkpoint
    from gpt2pipe.train import loop as train_mod

    raw = tiny_config(tmp_path)
    raw["train"].update(device="cuda", ops="kernels")
    raw["model"]["n_embd"] = 64
    cfg = config.from_dict(raw)
    shards = build_shards(cfg)
    train_mod.train(cfg, shards, tmp_path / "full", progress=False)
    crash_then_resume(cfg, shards, tmp_path / "resumed", monkeypatch)
    log = (tmp_path / "full" / "train" / "train.log").read_text()
    assert (tmp_path / "resumed" / "train" / "train.log").read_text() == log
    a = checkpoint.read(tmp_path / "full" / "train" / "model_000006.pt")["model"]
    b = checkpoint.read(tmp_path / "resumed" / "train" / "model_000006.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["transformer.wte.weight"].dtype == torch.bfloat16
    # a kernels checkpoint evaluates on the torch path
    model, _ = checkpoint.load_model(tmp_path / "full" / "train" / "model_000006.pt", cfg.model)
    assert model.transformer.wte.weight.dtype == torch.float32


fp8_gpu = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                             reason="fp8 needs an sm_89+ GPU")


@gpu
@fp8_gpu
def test_fp8_casts_scale_by_powers_of_two_and_record_amax():
    from gpt2pipe.ops import fp8

    torch.manual_seed(0)
    state = fp8.Fp8State(1, torch.device("cuda"))
    x = (torch.randn(4096, 768, device="cuda") * 3e-5).bfloat16()  # gradient-sized values
    state.prev[0, fp8.DY] = x.abs().max().float()
    x8 = fp8.cast(x, fp8.E5M2, state, 0, fp8.DY)
    inv = state.inv[0, fp8.DY].item()
    assert inv == 2.0 ** round(torch.log2(torch.tensor(inv)).item())  # a power of two: exact to undo
    assert state.cur[0, fp8.DY].item() == x.abs().max().item()
    assert rel(x8.float() * inv, x.float()) < 0.1  # e5m2: 2 mantissa bits
    assert x8.float().abs().max().item() <= 57344 / 2  # headroom kept

    w = (torch.randn(3072, 768, device="cuda") * 0.02).bfloat16()
    w8, w8t = fp8._weight(w, state, 0, fp8.W_FC)
    assert torch.equal(w8t.view(torch.uint8), w8.t().contiguous().view(torch.uint8))
    assert rel(w8.float() * state.inv[0, fp8.W_FC].item(), w.float()) < 0.05  # e4m3: 3 mantissa bits

    # LayerNorm writes the e4m3 copy of its output itself, scaled from the slot's previous amax
    res, xin = leaf(512, 768), leaf(512, 768)
    ln_w, ln_b = leaf(768), leaf(768)
    state.prev[0, fp8.X_QKV] = 4.0
    _, out, out8 = K.residual_layernorm(res, xin, ln_w, ln_b, (state, 0, fp8.X_QKV))
    assert rel(out8.float() * state.inv[0, fp8.X_QKV].item(), out.float()) < 0.05
    assert state.cur[0, fp8.X_QKV].item() == pytest.approx(out.float().abs().max().item(), rel=1e-2)

    big = torch.full((64, 16), 1e4, device="cuda").bfloat16()  # grew past its delayed scale: saturates
    state.prev[0, fp8.H] = 1.0
    assert torch.isfinite(fp8.cast(big, fp8.E4M3, state, 0, fp8.H).float()).all()


@gpu
@fp8_gpu
def test_fp8_mlp_calibrates_in_bf16_then_tracks_the_bf16_mlp():
    from gpt2pipe.ops import fp8

    torch.manual_seed(0)
    C, M = 768, 4096
    h = leaf(M, C)
    w_fc, b_fc = leaf(4 * C, C, scale=0.02), leaf(4 * C, scale=0.02)
    w_pr, b_pr = leaf(C, 4 * C, scale=0.02), leaf(C, scale=0.02)
    inputs = (h, w_fc, b_fc, w_pr, b_pr)
    dy = torch.randn(M, C, device="cuda").bfloat16() * 1e-4
    want_y = R.bias_gelu(h @ w_fc.t(), b_fc) @ w_pr.t() + b_pr
    want = grads_of(want_y, inputs, dy)
    state = fp8.Fp8State(1, torch.device("cuda"))
    for micro_step in range(3):
        state.roll()
        y = fp8.Fp8Mlp.apply(h, None, w_fc, b_fc, w_pr, b_pr, state, 0)
        got = grads_of(y, inputs, dy)
        if micro_step == 0:  # no amax yet: bf16 (our kernels), measuring
            assert rel(y, want_y) < 1e-2 and all(rel(g, w) < 2e-2 for g, w in zip(got, want))
        else:
            assert rel(y, want_y) < 0.06
            assert all(rel(g, w) < 0.1 for g, w in zip(got, want)), [rel(g, w) for g, w in zip(got, want)]
    assert state.ready == {"fwd": True, "bwd": True}
    assert (state.prev[0, [fp8.H, fp8.G, fp8.DY, fp8.DPRE, fp8.W_FC, fp8.W_PROJ]] > 0).all()


@gpu
@fp8_gpu
def test_fp8_training_follows_bf16_training():
    from gpt2pipe.config import from_dict
    from gpt2pipe.train.loop import make_flat_optimizer, optimizer_step

    t = from_dict({"train": {"learning_rate": 1e-3, "warmup_steps": 0, "stochastic_rounding": False}}).train
    cfg = ModelConfig(n_layer=2, n_head=4, n_embd=128, block_size=64)
    torch.manual_seed(0)
    bf = GPT(cfg, ops="kernels").cuda()
    f8 = GPT(cfg, ops="kernels", fp8=True).cuda()
    f8.load_state_dict(bf.state_dict())
    opts = make_flat_optimizer(bf, t), make_flat_optimizer(f8, t)
    data = torch.randint(0, 50257, (4, 16, 65), device="cuda")  # 4 batches, seen 5 times: the loss falls
    losses = []
    for step in range(20):
        x, y = data[step % 4, :, :-1], data[step % 4, :, 1:]
        pair = []
        for model, opt in zip((bf, f8), opts):
            loss = model(x, y)[1]
            loss.backward()
            optimizer_step(opt, model, 1e-3, 1.0)
            pair.append(loss.item())
        losses.append(pair)
    assert f8._fp8_state.ready == {"fwd": True, "bwd": True}
    for step, (l_bf, l_f8) in enumerate(losses):
        assert l_f8 == pytest.approx(l_bf, rel=2e-2), (step, losses)
    assert losses[-1][1] < losses[0][1] - 1.0
