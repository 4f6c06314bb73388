"""Each CUDA kernel against its torch reference (GPU), and an NVRTC compile of every source (CPU too)."""

import pytest
import torch

from gpt2pipe.config import ModelConfig
from gpt2pipe.model import GPT
from gpt2pipe.ops import functions as K
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
                                         "bias_grad"}
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
    from gpt2pipe.train import make_flat_optimizer, make_optimizer, optimizer_step
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

    from gpt2pipe import checkpoint, config, train as train_mod

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
