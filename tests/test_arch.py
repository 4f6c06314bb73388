"""The model.arch options (RoPE, RMSNorm, SwiGLU/ReLU², QK-norm, GQA, untied head, no biases): both forward
paths, parameter and FLOP counts, config refusals, old checkpoints, the Hugging Face Llama round trip, and a
LLaMA-style run through train, evaluate, sample, export and init_from."""

import dataclasses
import itertools
import json
import math

import pytest
import torch
import torch.nn as nn

from gpt2pipe import Gpt2pipeError, config
from gpt2pipe.config import ARCH_KEYS, ModelConfig, training_identity
from gpt2pipe.data.tokenizer import gpt2
from gpt2pipe.model import checkpoint
from gpt2pipe.model import gpt as gpt_mod
from gpt2pipe.model.formats.hf import from_hf, to_hf
from gpt2pipe.model.formats.llmc import to_llmc
from gpt2pipe.model.gpt import GPT, RMSNorm
from gpt2pipe.model.load import load_any

LLAMA = dict(pos_embedding="rope", norm="rmsnorm", mlp="swiglu", bias=False)
# every combination of the options (n_kv_head 2 = GQA with 2 query heads per kv head)
OPTIONS = dict(pos_embedding=["learned", "rope"], norm=["layernorm", "rmsnorm"], mlp=["gelu", "swiglu", "relu2"],
               qk_norm=[False, True], n_kv_head=[None, 2], tie_embeddings=[True, False], bias=[True, False])
COMBOS = [dict(zip(OPTIONS, values)) for values in itertools.product(*OPTIONS.values())]


def small(**arch) -> ModelConfig:
    """4 heads of 8 channels; a 250-token vocabulary padded to 256 keeps each model a few milliseconds."""
    return ModelConfig(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=250, padded_vocab_size=256, **arch)


def model_of(cfg: ModelConfig, seed: int = 0, **kw) -> GPT:
    """A model with non-trivial gains and biases (all 1 and 0 at init), so a misplaced one shows."""
    torch.manual_seed(seed)
    m = GPT(cfg, **kw)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return m


def batch(cfg: ModelConfig, B: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, cfg.vocab_size, (B, cfg.block_size), generator=g),
            torch.randint(0, cfg.vocab_size, (B, cfg.block_size), generator=g))


def loss_and_grads(model: GPT, x, y):
    model.zero_grad()
    _, loss = model(x, y)
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("arch", COMBOS, ids=lambda a: "-".join(str(v) for v in a.values()))
def test_kernels_path_matches_the_torch_path(arch):
    """Without a GPU the kernels path runs the references: this checks its wiring (which norm, the fused
    residual adds, RoPE and QK-norm on the packed qkv, the activations, the head) against the plain modules."""
    cfg = small(**arch)
    plain = model_of(cfg)
    kern = GPT(cfg, ops="kernels")
    kern.load_state_dict(plain.state_dict())
    assert kern.gpt2 == (not cfg.arch_changes())  # GPT-2 keeps its own kernels path
    x, y = batch(cfg)
    loss_t, grads_t = loss_and_grads(plain, x, y)
    loss_k, grads_k = loss_and_grads(kern, x, y)
    assert torch.allclose(loss_t, loss_k, atol=1e-6), (loss_t, loss_k)
    assert grads_t.keys() == grads_k.keys()
    for k in grads_t:
        assert torch.allclose(grads_t[k], grads_k[k], atol=1e-6, rtol=1e-5), k
    with torch.no_grad():
        assert torch.allclose(plain(x)[0], kern(x)[0], atol=1e-5)


@pytest.mark.parametrize("arch", [LLAMA, dict(LLAMA, n_kv_head=1, qk_norm=True, tie_embeddings=False),
                                  dict(mlp="relu2", qk_norm=True)])
def test_recompute_gives_the_same_loss_and_gradients(arch):
    cfg = small(**arch)
    kern = model_of(cfg, ops="kernels")
    again = GPT(cfg, ops="kernels", recompute=True)
    again.load_state_dict(kern.state_dict())
    x, y = batch(cfg)
    (la, ga), (lb, gb) = loss_and_grads(kern, x, y), loss_and_grads(again, x, y)
    assert torch.equal(la, lb)
    assert all(torch.allclose(ga[k], gb[k], atol=1e-7) for k in ga)


@pytest.mark.parametrize("repeat", [True, False], ids=["sdpa-gqa", "repeat-kv"])
def test_grouped_query_attention_is_attention_with_repeated_kv_heads(repeat, monkeypatch):
    """GQA with G kv heads = multi-head attention whose k and v heads are each repeated H/G times (query head
    h reads kv head h // (H/G)), on both ways attention() computes it (SDPA's enable_gqa, repeat_interleave)."""
    monkeypatch.setattr(gpt_mod, "_SDPA_GQA", repeat and gpt_mod._SDPA_GQA)
    for arch in (dict(LLAMA, n_kv_head=2), dict(n_kv_head=1, qk_norm=True)):
        gqa_cfg = small(**arch)
        H, G, D, C = gqa_cfg.n_head, gqa_cfg.kv_heads, gqa_cfg.head_dim, gqa_cfg.n_embd
        gqa = model_of(gqa_cfg)
        state = gqa.state_dict()
        for k in [k for k in state if k.endswith("attn.c_attn.weight") or k.endswith("attn.c_attn.bias")]:
            q, kk, v = state[k].split([H * D, G * D, G * D])
            heads = lambda t: t.view(G, D, -1).repeat_interleave(H // G, 0).reshape(H * D, *t.shape[1:])  # noqa: E731
            state[k] = torch.cat([q, heads(kk), heads(v)])
        mha = GPT(dataclasses.replace(gqa_cfg, n_kv_head=None))
        mha.load_state_dict(state)
        assert mha.transformer.h[0].attn.c_attn.weight.shape == (3 * C, C)
        assert gqa.transformer.h[0].attn.c_attn.weight.shape == ((H + 2 * G) * D, C)
        x, _ = batch(gqa_cfg)
        with torch.no_grad():
            assert torch.allclose(gqa(x)[0], mha(x)[0], atol=1e-5)


def test_rope_alone_tells_the_model_where_tokens_are():
    """In one layer without position embeddings, the last position attends to the earlier tokens as a set:
    swapping two of them leaves its logits unchanged. RoPE makes their order matter (and keeps it causal)."""
    cfg = dataclasses.replace(small(**LLAMA), n_layer=1)
    model = model_of(cfg).eval()
    assert "wpe" not in model.transformer
    blind = GPT(dataclasses.replace(cfg, pos_embedding="learned"))  # the same weights, no position signal:
    blind.load_state_dict(model.state_dict(), strict=False)           # wpe zeroed
    with torch.no_grad():
        model.transformer.h[0].attn.c_attn.weight.mul_(20)  # sharp attention, so positions show clearly
        blind.transformer.h[0].attn.c_attn.weight.copy_(model.transformer.h[0].attn.c_attn.weight)
        blind.transformer.wpe.weight.zero_()
        x, _ = batch(cfg)
        swapped = x.clone()
        swapped[:, [2, 5]] = x[:, [5, 2]]
        full = model(x)[0]
        assert torch.allclose(model(x[:, :8])[0], full[:, :8], atol=1e-5)  # causal
        moved = (model(swapped)[0][:, -1] - full[:, -1]).abs().max()
        unmoved = (blind(swapped)[0][:, -1] - blind(x)[0][:, -1]).abs().max()
    assert unmoved < 1e-5 and moved > 1e-2, (moved, unmoved)


@pytest.mark.parametrize("arch", [{}, dict(LLAMA, n_kv_head=1, tie_embeddings=False),
                                  dict(mlp="relu2", mlp_hidden=80, pos_embedding="rope", qk_norm=True),
                                  dict(norm="rmsnorm", mlp="swiglu", n_kv_head=2, bias=True, tie_embeddings=False)])
def test_parameter_and_flop_counts_are_those_of_the_matmuls(arch):
    """num_params(embeddings=False) counts what is multiplied: every linear (the head once, tied or not) and
    the norms; not the lookups (wpe, and wte when the head does not share it). flops_per_token is 6N plus
    attention's 12 L T C."""
    cfg = small(**arch)
    model = GPT(cfg)
    linears = sum(p.numel() for m in model.modules() if isinstance(m, nn.Linear) for p in m.parameters())
    norms = sum(p.numel() for m in model.modules() if isinstance(m, (nn.LayerNorm, RMSNorm)) for p in m.parameters())
    n = model.num_params(embeddings=False)
    assert n == linears + norms
    # the same from the config alone
    C, L, H, G, D, F, Vp = (cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.kv_heads, cfg.head_dim, cfg.hidden,
                            cfg.padded_vocab_size)
    fc = 2 * F if cfg.mlp == "swiglu" else F
    bias = ((H + 2 * G) * D + C + fc + C) if cfg.bias else 0
    norm = C if cfg.norm == "rmsnorm" else 2 * C
    assert n == L * (C * (H + 2 * G) * D + H * D * C + C * fc + F * C + bias + 2 * norm) + norm + Vp * C
    lookups = (cfg.block_size * C if cfg.pos_embedding == "learned" else 0) + (0 if cfg.tie_embeddings else Vp * C)
    assert model.num_params() == n + lookups
    assert model.flops_per_token(16) == 6 * n + 12 * L * C * 16


def test_swiglu_default_width_is_llamas():
    for C in (32, 128, 768, 1024, 1600):
        F = ModelConfig(n_embd=C, n_head=8 if C != 1600 else 25, mlp="swiglu").hidden
        assert F % 64 == 0 and F - 64 < 8 * C / 3 <= F, (C, F)
    assert ModelConfig(mlp="swiglu").hidden == 2048  # n_embd 768: 8/3 * 768 exactly
    assert ModelConfig(mlp="relu2").hidden == ModelConfig().hidden == 3072
    assert ModelConfig(mlp="swiglu", mlp_hidden=100).hidden == 100


def test_llmc_initialisation_holds_for_the_new_options():
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, tie_embeddings=False, **LLAMA)
    model = GPT(cfg)
    h = model.transformer.h[0]
    assert h.attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert h.mlp.c_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.05)
    assert h.attn.c_attn.bias is None and h.ln_1.weight.eq(1).all() and isinstance(h.ln_1, RMSNorm)
    head = model.lm_head.weight
    assert head is not model.transformer.wte.weight
    assert head[: cfg.vocab_size].std().item() == pytest.approx(0.02, rel=0.05)
    assert head[cfg.vocab_size:].abs().sum() == 0  # padding rows, never scored


@pytest.mark.parametrize("raw, message", [
    ({"model": {"n_kv_head": 5}}, "model.n_head must be divisible by model.n_kv_head (12 % 5 != 0)"),
    ({"model": {"n_kv_head": 24}}, "model.n_head must be divisible by model.n_kv_head (12 % 24 != 0)"),
    ({"model": {"pos_embedding": "rope", "n_embd": 36, "n_head": 4}},
     "model.pos_embedding rope rotates pairs of channels: the head dimension n_embd / n_head must be even "
     "(got 36 / 4 = 9)"),
    ({"model": {"mlp": "swiglu", "qk_norm": True}, "train": {"fp8": True}},
     "train.fp8 runs GPT-2's LayerNorm/GELU blocks only, not model mlp swiglu, qk_norm True: set train.fp8 false"),
    ({"model": {"tie_embeddings": False}, "train": {"fp8": True}}, "not model tie_embeddings False"),
    ({"model": {"norm": "batchnorm"}}, "model.norm: 'batchnorm' is not one of ['layernorm', 'rmsnorm']"),
    ({"model": {"mlp_hidden": 0}}, "model.mlp_hidden: 0 is less than the minimum of 1"),
    ({"model": {"n_embd": 100, "n_head": 12}}, "model.n_embd must be divisible by model.n_head (100 % 12 != 0)"),
])
def test_bad_arch_config_fails_with_one_line(raw, message):
    with pytest.raises(Gpt2pipeError) as e:
        config.from_dict(raw, "my.yaml")
    assert str(e.value).startswith("my.yaml: ") and message in str(e.value) and "\n" not in str(e.value)


def test_arch_refusals_blame_the_override_and_guard_direct_construction():
    with pytest.raises(Gpt2pipeError, match=r"^--set model.n_kv_head=5: model.n_head must be divisible"):
        config.load(None, ["model.n_kv_head=5"])
    with pytest.raises(Gpt2pipeError, match=r"^--set train.fp8=true: train.fp8 runs GPT-2's"):
        config.load(None, ["model.pos_embedding=rope", "train.fp8=true"])
    with pytest.raises(Gpt2pipeError, match="divisible by model.n_kv_head"):
        GPT(small(n_kv_head=3))  # a shape built in code (or read from a file) is checked too
    with pytest.raises(Gpt2pipeError, match="train.fp8 runs GPT-2's"):
        GPT(small(**LLAMA), fp8=True)


def test_checkpoints_without_the_new_keys_load_as_gpt2(tmp_path):
    """ModelConfig is stored in every checkpoint; those written before the arch options were keys load as
    GPT-2, and the default keys stay out of the training identity, so older saved states still resume."""
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16)
    model = model_of(cfg).eval()
    checkpoint.save(tmp_path / "m.pt", model, 5)
    ck = torch.load(tmp_path / "m.pt", weights_only=True)
    ck["model_config"] = {k: v for k, v in ck["model_config"].items() if k not in ARCH_KEYS}
    assert set(ck["model_config"]) == {"n_layer", "n_head", "n_embd", "block_size", "vocab_size", "padded_vocab_size"}
    torch.save(ck, tmp_path / "old.pt")
    old, meta = checkpoint.load_model(tmp_path / "old.pt", cfg)
    assert old.config == cfg and not old.config.arch_changes() and meta["step"] == 5
    x, _ = batch(cfg)
    assert torch.equal(old(x)[0], model(x)[0])
    gpt2 = training_identity(config.from_dict({}).raw)["model"]
    assert not set(ARCH_KEYS) & set(gpt2)
    rope = training_identity(config.from_dict({"model": {"pos_embedding": "rope"}}).raw)["model"]
    assert rope == dict(gpt2, pos_embedding="rope")


def test_checkpoint_keeps_the_arch(tmp_path):
    cfg = small(**LLAMA, n_kv_head=2, qk_norm=True, tie_embeddings=False, rope_theta=500.0)
    model = model_of(cfg).eval()
    checkpoint.save(tmp_path / "m.pt", model, 2)
    back, _ = load_any(tmp_path / "m.pt", cfg)
    assert back.config == cfg
    x, _ = batch(cfg)
    assert torch.equal(back(x)[0], model(x)[0])
    with pytest.raises(Gpt2pipeError, match=r"another model shape \(checkpoint vs config: n_kv_head 2 != 4\)"):
        load_any(tmp_path / "m.pt", dataclasses.replace(cfg, n_kv_head=None))
    load_any(tmp_path / "m.pt", dataclasses.replace(cfg, mlp_hidden=cfg.hidden))  # the same shape, spelled out


HF_ARCHS = [dict(LLAMA), dict(LLAMA, n_kv_head=1, tie_embeddings=False),
            dict(LLAMA, n_kv_head=2, bias=True, rope_theta=500.0, mlp_hidden=96)]


@pytest.mark.parametrize("arch", HF_ARCHS, ids=["tied", "gqa-untied", "bias-theta-width"])
def test_llama_export_loads_in_transformers_with_our_logits(arch, tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = dataclasses.replace(small(**arch), vocab_size=50257, padded_vocab_size=50304, block_size=32)
    model = model_of(cfg).eval()
    to_hf(model, tmp_path / "hf")
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    c = hf.config
    assert (c.num_key_value_heads, c.intermediate_size, c.tie_word_embeddings) == (cfg.kv_heads, cfg.hidden,
                                                                                   cfg.tie_embeddings)
    x = torch.randint(0, 50257, (2, 32), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours, theirs = model(x)[0], hf(x).logits
    assert ours.std() > 0.1  # not a degenerate model
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
    # and back: the same config, tensors and logits
    back_cfg, state = from_hf(tmp_path / "hf")
    assert back_cfg == cfg
    for k, v in model.state_dict().items():
        assert torch.equal(state[k], v), k
    back, _ = load_any(tmp_path / "hf")
    assert torch.equal(back(x)[0], ours)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "To be, or not to be: ünïcödé 123"
    assert tok.encode(text) == gpt2().encode_ordinary(text)  # GPT-2's BPE, as our data


@pytest.mark.parametrize("arch, misfit", [
    (dict(LLAMA, qk_norm=True), "LlamaForCausalLM has no qk_norm True"),
    (dict(LLAMA, mlp="relu2"), "LlamaForCausalLM has no mlp relu2"),
    (dict(pos_embedding="rope"), "LlamaForCausalLM has no norm layernorm, mlp gelu"),
    (dict(LLAMA, pos_embedding="learned"), "LlamaForCausalLM has no pos_embedding learned"),
    (dict(tie_embeddings=False), "has no pos_embedding learned, norm layernorm, mlp gelu"),
])
def test_export_refuses_what_no_format_holds(arch, misfit, tmp_path):
    model = GPT(small(**arch))
    with pytest.raises(Gpt2pipeError) as e:
        to_hf(model, tmp_path / "hf")
    assert misfit in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "hf").exists()  # refused before anything was written
    with pytest.raises(Gpt2pipeError, match=r"m.bin: llm.c's model .bin holds GPT-2 only, not model "):
        to_llmc(model, tmp_path / "m.bin")
    assert not (tmp_path / "m.bin").exists()


@pytest.mark.parametrize("change, message", [
    ({"rms_norm_eps": 1e-5}, "Llama rms_norm_eps 1e-05 has no counterpart in our model (needs 1e-06)"),
    ({"hidden_act": "gelu"}, "Llama hidden_act 'gelu' has no counterpart"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}}, "Llama rope type 'llama3'"),
    ({"head_dim": 16}, "Llama head_dim 16 has no counterpart in our model (needs 8)"),
    ({"mlp_bias": True}, "Llama mlp_bias unlike attention_bias True"),
])
def test_llama_import_refuses_what_our_model_is_not(change, message, tmp_path):
    to_hf(GPT(small(**LLAMA)), tmp_path / "hf")
    conf = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps(dict(conf, **change)))
    with pytest.raises(Gpt2pipeError) as e:
        from_hf(tmp_path / "hf")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_llama_style_run_trains_evaluates_samples_exports_and_restarts(tmp_path, capsys):
    """train -> evaluate (its val loss is the in-training one) -> sample -> export to HF -> evaluate the
    export -> init_from it, with GQA, an untied head and QK-norm off (so it exports)."""
    from conftest import build_shards, tiny_config
    from gpt2pipe.cli import main
    from gpt2pipe.eval import hellaswag
    from gpt2pipe.eval.evaluate import evaluate_checkpoint
    from gpt2pipe.train import loop as train

    arch = dict(LLAMA, n_head=4, n_kv_head=2, tie_embeddings=False)
    cfg = config.from_dict(tiny_config(tmp_path, model=arch))
    assert cfg.model.arch_changes() == dict(LLAMA, n_kv_head=2, tie_embeddings=False)
    shards = build_shards(cfg)
    out = train.train(cfg, shards, tmp_path / "run", progress=False)
    assert out["train_losses"][-1] < out["train_losses"][0]
    snap = tmp_path / "run" / "train" / "model_000006.pt"
    model, _ = checkpoint.load_model(snap, cfg.model)
    assert "wpe" not in model.transformer and model.lm_head.weight is not model.transformer.wte.weight
    hs = tmp_path / "hs.bin"
    hellaswag.write_bin(hs, hellaswag.read_jsonl(hellaswag.demo_jsonl(), max_examples=8))
    result = evaluate_checkpoint(cfg, snap, shards, hs, tmp_path / "eval.json")
    log = (tmp_path / "run" / "train" / "train.log").read_text()
    assert f"s:6 tel:{result['val_loss']:.4f}" in log and result["hellaswag_examples"] == 8
    assert main(["sample", "--checkpoint", str(snap), "--max-new-tokens", "5", "--num-samples", "2",
                 "--temperature", "0", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.count("--- sample ") == 2
    assert main(["export", "--checkpoint", str(snap), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    via_hf = evaluate_checkpoint(cfg, tmp_path / "hf", shards, None, tmp_path / "hf.json")
    assert via_hf["val_loss"] == result["val_loss"]
    restart = dict(cfg.raw, train=dict(cfg.raw["train"], init_from=str(tmp_path / "hf"), max_steps=1))
    train.train(config.from_dict(restart), shards, tmp_path / "again", progress=False)
    first = (tmp_path / "again" / "train" / "train.log").read_text().splitlines()[0]
    assert first == f"s:0 tel:{result['val_loss']:.4f}"


@pytest.mark.gpu
@pytest.mark.parametrize("arch", [LLAMA, dict(LLAMA, n_kv_head=1, qk_norm=True, tie_embeddings=False),
                                  dict(mlp="relu2", pos_embedding="rope", qk_norm=True), dict(norm="rmsnorm")])
def test_kernels_path_on_the_gpu_matches_the_torch_path(arch):
    """bf16 weights on the GPU, as training on the kernels path runs: ops/arch.py's kernels (where written)
    against the plain modules, within bf16's precision."""
    cfg = dataclasses.replace(small(**arch), n_embd=128, n_head=4, block_size=64)
    plain = model_of(cfg).cuda().to(torch.bfloat16)
    kern = GPT(cfg, ops="kernels").cuda().to(torch.bfloat16)
    kern.load_state_dict(plain.state_dict())
    x, y = (t.cuda() for t in batch(cfg, B=4))
    (lt, gt), (lk, gk) = loss_and_grads(plain, x, y), loss_and_grads(kern, x, y)
    assert abs(lt.item() - lk.item()) < 2e-2, (lt, lk)
    for k in gt:
        a, b = gt[k].float(), gk[k].float()
        assert (a - b).norm() <= 0.05 * a.norm() + 1e-6, k


def test_a_model_config_from_a_file_with_an_unknown_option_value_is_refused():
    """Checkpoints carry their ModelConfig without the schema: an option value this version does not know
    (a newer or edited file) must not build some other model silently."""
    from gpt2pipe.config import ModelConfig

    for key, value in (("pos_embedding", "alibi"), ("norm", "batchnorm"), ("mlp", "geglu")):
        problem = ModelConfig(n_layer=1, n_head=2, n_embd=16, **{key: value}).problem()
        assert problem is not None and f"model.{key}: '{value}' is not one of" in str(problem)
        with pytest.raises(Exception, match=f"model.{key}"):
            GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, **{key: value}))
