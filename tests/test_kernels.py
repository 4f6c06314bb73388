"""Each CUDA kernel against its torch reference (GPU); on CPU too: an NVRTC compile of every source, the
parsed kernel signatures against what NVRTC built, the launch-argument checks, and the fp8 converter."""

import ast
import functools
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from gpt2pipe import Gpt2pipeError
from gpt2pipe.config import ModelConfig
from gpt2pipe.model.gpt import GPT
from gpt2pipe.model import kernels_path
from gpt2pipe.ops import FUSIONS
from gpt2pipe.ops import attention as attention_ops
from gpt2pipe.ops import classifier as classifier_ops
from gpt2pipe.ops import linear as linear_ops
from gpt2pipe.ops.attention import qkv_attention
from gpt2pipe.ops.classifier import FusedClassifier, fused_classifier
from gpt2pipe.ops.encoder import Encoder
from gpt2pipe.ops.fp8 import has_fp8_gemms
from gpt2pipe.ops.layernorm import LayerNorm, ResidualLayerNorm, residual_layernorm
from gpt2pipe.ops.linear import LinearBias
from gpt2pipe.ops.mlp import BiasGelu, mlp
from gpt2pipe.ops import reference as R

cupy = pytest.importorskip("cupy", reason="CuPy is not installed")
gpu = pytest.mark.gpu


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@functools.cache
def _ptx(path: Path) -> str:
    from gpt2pipe.ops import cuda

    return cuda.compile_check(path)


def test_every_kernel_source_compiles_with_nvrtc():
    from gpt2pipe.ops import cuda

    sources = cuda.sources()
    assert {p.stem for p in sources} >= {"encoder", "layernorm", "gelu", "classifier", "adamw", "global_norm",
                                         "bias_grad", "fp8"}
    assert not cuda.missing_sources()
    assert set(cuda.SOURCES) == {p.name for p in cuda.kernel_dir().glob("*.cu*")}  # a new file is listed too
    for path in sources:
        assert ".entry" in _ptx(path)


def test_parsed_signatures_match_what_nvrtc_compiled():
    """The C signatures launch() checks against, read from the sources, name every kernel NVRTC built,
    with the parameter sizes it built them with."""
    from gpt2pipe.ops import cuda

    size = {"int": 4, "unsigned int": 4, "long long": 8, "unsigned long long": 8, "float": 4, "double": 8}
    for path in cuda.sources():
        compiled = cuda.ptx_entries(_ptx(path))
        parsed = cuda.signatures(path.stem)
        assert set(parsed) == set(compiled), path.name
        for kernel, params in parsed.items():
            assert [8 if p.pointer else size[p.ctype] for p in params] == compiled[kernel], kernel
    fp8_cast = cuda.signatures("fp8")["cast_e4m3"]
    assert [(p.name, p.ctype, p.pointer) for p in fp8_cast][-1] == ("n8", "long long", False)


def test_signature_parser_reads_typedefs_macros_and_rejects_unknown_types():
    from gpt2pipe.ops.signature import parse_signatures

    header = "typedef unsigned char fp8;  // one byte\n"
    code = """#include "h.cuh"
    /* extern "C" __global__ void commented_out(int x) {} */
    #define ENTRY(V) extern "C" __global__ void __launch_bounds__(128, (V <= 3 ? 6 : 2)) k##V(fp8* out, \\
                                                                  const bf16* __restrict__ x, long long n) {}
    ENTRY(1)
    ENTRY(2)
    extern "C" __global__ void plain(float* y, unsigned int seed, int count) {}
    """
    kernels = parse_signatures(code, {"h.cuh": header})
    assert set(kernels) == {"k1", "k2", "plain"}
    assert [p.describe() for p in kernels["k2"]] == ["unsigned char* out", "__nv_bfloat16* x", "long long n"]
    assert [p.describe() for p in kernels["plain"]] == ["float* y", "unsigned int seed", "int count"]
    with pytest.raises(Gpt2pipeError, match="half2"):
        parse_signatures('extern "C" __global__ void k(half2 x) {}')


def test_launch_arguments_are_checked_against_the_kernel_signature():
    from gpt2pipe.ops import cuda
    from gpt2pipe.ops.signature import KernelArgumentError

    x = torch.zeros(64, dtype=torch.bfloat16)
    out = torch.zeros(64, dtype=torch.float8_e4m3fn)
    amax = torch.zeros((), dtype=torch.float32)

    def cast_args(*args, require_cuda=False, **kwargs):
        return cuda.kernel_arguments("fp8", "cast_e4m3", args, kwargs, require_cuda=require_cuda)

    good = cast_args(out, amax, amax, x, amax, 8)
    assert [type(v) for v in good] == [np.uint64] * 5 + [np.int64]  # `long long n8` gets 8 bytes
    assert good[3] == x.data_ptr() and good[5] == 8
    assert cast_args(out, amax, amax, x, amax_prev=amax, n8=8) == good  # keywords by C parameter name
    assert cast_args(out, None, amax, x, amax, 8)[1] == 0  # None: a null pointer
    bad = {  # a wrong launch fails before anything runs, naming the kernel and the parameter
        r"kernel cast_e4m3, parameter __nv_bfloat16\* x: needs a tensor of torch.bfloat16, got torch.float32":
            lambda: cast_args(out, amax, amax, x.float(), amax, 8),
        r"parameter unsigned char\* out: needs a tensor of .*got torch.float16":
            lambda: cast_args(out.half(), amax, amax, x, amax, 8),
        r"kernel cast_e4m3: missing argument\(s\) n8": lambda: cast_args(out, amax, amax, x, amax),
        r"7 positional arguments for 6 parameters": lambda: cast_args(out, amax, amax, x, amax, 8, 1),
        r"no parameter named 'n'": lambda: cast_args(out, amax, amax, x, amax, n=8),
        r"parameter 'n8' given twice": lambda: cast_args(out, amax, amax, x, amax, 8, n8=8),
        r"parameter long long n8: needs an integer, got float": lambda: cast_args(out, amax, amax, x, amax, 8.0),
        r"parameter long long n8: needs a number, got a tensor":
            lambda: cast_args(out, amax, amax, x, amax, torch.tensor(8)),
        r"parameter float\* amax_prev: needs a tensor or None, got int": lambda: cast_args(out, amax, amax, x, 0, 8),
        r"needs a CUDA tensor, got one on cpu": lambda: cast_args(out, amax, amax, x, amax, 8, require_cuda=True),
        r"needs a contiguous tensor": lambda: cast_args(out, amax, amax, x.view(8, 8).t(), amax, 8),
        r"parameter int N: 2147483648 is outside the range of int":
            lambda: cuda.kernel_arguments("bias_grad", "bias_grad", (amax, x, 2**31, 8), {}, require_cuda=False),
        r"parameter float max_norm: needs a number, got str": lambda: cuda.kernel_arguments(
            "global_norm", "global_norm_finalize", (amax, amax, 1, "1.0"), {}, require_cuda=False),
        r"fp8.cu has no kernel 'cast_e4m4'": lambda: cuda.kernel_arguments("fp8", "cast_e4m4", (), {}),
    }
    for message, launch in bad.items():
        with pytest.raises(KernelArgumentError, match=message):
            launch()


def test_adamw_launch_by_parameter_name():
    from gpt2pipe.ops import cuda
    from gpt2pipe.ops.signature import KernelArgumentError

    bf, f32 = torch.zeros(16, dtype=torch.bfloat16), torch.zeros(16)
    named = dict(params=bf, master=f32, m=f32, v=f32, grads=bf, clip=f32, n=16, n_decay=8, offset=2**40,
                 lr=6e-4, beta1=0.9, beta2=0.95, bias1=0.1, bias2=0.05, eps=1e-8, weight_decay=0.1,
                 seed=2**32 - 1, stochastic=True)
    args = cuda.kernel_arguments("adamw", "adamw_update", (), named, require_cuda=False)
    assert args[8] == 2**40 and type(args[8]) is np.int64 and type(args[16]) is np.uint32
    assert type(args[9]) is np.float32 and args[17] == 1
    with pytest.raises(KernelArgumentError, match=r"unsigned int seed: 4294967296 is outside"):
        cuda.kernel_arguments("adamw", "adamw_update", (), {**named, "seed": 2**32}, require_cuda=False)
    with pytest.raises(KernelArgumentError, match=r"float\* master: needs a tensor of torch.float32, got torch.bfloat16"):
        cuda.kernel_arguments("adamw", "adamw_update", (), {**named, "master": bf}, require_cuda=False)


def test_kernels_are_unavailable_when_a_source_is_missing(tmp_path, monkeypatch):
    from gpt2pipe import ops
    from gpt2pipe.ops import cuda

    installed = cuda.kernel_dir()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU node with CuPy
    monkeypatch.setattr(cuda, "kernel_dir", lambda: tmp_path)
    try:
        ops.kernels_available.cache_clear()
        assert not ops.kernels_available()
        for name in cuda.SOURCES:
            shutil.copy(installed / name, tmp_path / name)
        assert cuda.missing_sources() == []
        ops.kernels_available.cache_clear()
        assert ops.kernels_available()
        (tmp_path / "fp8.cuh").unlink()
        assert cuda.missing_sources() == ["fp8.cuh"]
    finally:
        ops.kernels_available.cache_clear()


def test_kernel_ops_and_the_model_have_no_import_cycle():
    """No cycle among ops/ and the model, counting imports inside functions: the op modules never import
    ops/fp8 (fp8 builds on them), and ops/ never imports the model."""
    import gpt2pipe

    root = Path(gpt2pipe.__file__).parent
    files = [*sorted((root / "ops").rglob("*.py")), root / "model" / "gpt.py", root / "model" / "kernels_path.py"]

    def name_of(path: Path) -> str:
        parts = path.relative_to(root.parent).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    modules = {name_of(f): f for f in files}
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):  # imports inside functions count too
            if isinstance(node, ast.ImportFrom) and node.module:
                imported |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
        own_packages = {name.rsplit(".", k)[0] for k in range(1, name.count(".") + 1)}
        targets = set()
        for target in imported:  # importing a.b.c runs the __init__ of a.b as well
            pieces = target.split(".")
            targets |= {".".join(pieces[:k]) for k in range(2, len(pieces) + 1)}
        graph[name] = {t for t in targets if t in modules and t != name and t not in own_packages}

    def cycle_from(start, node, path):
        for nxt in graph[node]:
            if nxt == start:
                return path + [nxt]
            if nxt not in path:
                found = cycle_from(start, nxt, path + [nxt])
                if found:
                    return found
        return None

    for name in graph:
        assert cycle_from(name, name, [name]) is None, " -> ".join(cycle_from(name, name, [name]))
    for name, imported in graph.items():
        if name.startswith("gpt2pipe.ops"):
            assert not any(m.startswith("gpt2pipe.model") for m in imported), name
            if not name.startswith("gpt2pipe.ops.fp8"):
                assert not any(m.startswith("gpt2pipe.ops.fp8") for m in imported), name


def test_fp8_conversion_swaps_modules_and_keeps_the_model():
    from gpt2pipe.ops import fp8

    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16)
    torch.manual_seed(0)
    plain = GPT(cfg)
    converted = GPT(cfg, ops="kernels")  # on CPU the kernels path runs the references
    converted.load_state_dict(plain.state_dict())
    both = ("mlp", "qkv")
    assert fp8.convert_to_fp8(converted, both) is converted and fp8.convert_to_fp8(converted, both) is converted
    assert isinstance(converted.transformer.h[1].mlp, fp8.Fp8MLP)
    assert isinstance(converted.transformer.h[1].attn.c_attn, fp8.Fp8QkvLinear)
    assert list(converted.state_dict()) == list(plain.state_dict())
    assert [id(p) for p in converted.parameters()] == [id(p) for p in converted.parameters()]
    assert sum(p.numel() for p in converted.parameters()) == sum(p.numel() for p in plain.parameters())
    x = torch.randint(0, cfg.vocab_size, (2, 16))
    assert converted(x, x)[1].item() == pytest.approx(plain(x, x)[1].item(), rel=1e-6)
    converted.ops = "torch"
    assert converted(x, x)[1].item() == plain(x, x)[1].item()
    assert fp8.state_of(plain) is None


def test_fp8_conversion_of_one_gemm_kind_leaves_the_other_bf16():
    """train.fp8_gemms: [qkv] swaps only the qkv linear, [mlp] only the MLP, [head] only the LM head, with the
    same scaling slots (a
    state saved under one choice has the shape of any other's), and the model computes the same loss."""
    from gpt2pipe.ops import fp8

    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16)
    torch.manual_seed(0)
    plain = GPT(cfg)
    x = torch.randint(0, cfg.vocab_size, (2, 16))
    shapes = []
    plain_mlp = type(plain.transformer.h[0].mlp)
    for gemms, mlp_type, qkv_type, head_type in ((("qkv",), plain_mlp, fp8.Fp8QkvLinear, torch.nn.Linear),
                                                 (("mlp",), fp8.Fp8MLP, torch.nn.Linear, torch.nn.Linear),
                                                 (("head",), plain_mlp, torch.nn.Linear, fp8.Fp8Head)):
        model = GPT(cfg, ops="kernels")
        model.load_state_dict(plain.state_dict())
        fp8.convert_to_fp8(model, gemms)
        assert all(type(b.mlp) is mlp_type and type(b.attn.c_attn) is qkv_type for b in model.transformer.h)
        assert type(model.lm_head) is head_type
        assert model.lm_head.weight is model.transformer.wte.weight  # still tied
        assert list(model.state_dict()) == list(plain.state_dict())
        assert model(x, x)[1].item() == pytest.approx(plain(x, x)[1].item(), rel=1e-6)
        shapes.append({k: tuple(v.shape) for k, v in fp8.state_of(model).items() if hasattr(v, "shape")})
    assert shapes[0] == shapes[1] == shapes[2]


def test_a_qkv_only_fp8_model_leaves_calibration():
    """fp8_gemms: [qkv] must start running its GEMM in fp8 after the first micro-step, as the MLP does: the
    qkv forward marks the step measured (its LayerNorm recorded the amax). Before, only the MLP did, so a
    qkv-only model stayed in bf16 calibration for a whole 100M-token run."""
    from gpt2pipe.ops import fp8
    from gpt2pipe.ops.fp8.gemms import qkv_forward

    state = fp8.Fp8State(1, "cpu")
    x, w, b = torch.randn(4, 8), torch.randn(24, 8), torch.randn(24)
    state.roll()
    y = qkv_forward(x, None, w, b, state, 0)  # calibration: bf16 (here fp32 on CPU), exact
    assert torch.equal(y, torch.nn.functional.linear(x, w, b))
    state.roll()
    assert state.calibrated["forward"]


def test_fp8_state_round_trips_through_a_weights_only_load():
    from gpt2pipe.ops import fp8
    from gpt2pipe.ops.fp8 import Slot

    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16)
    model = fp8.convert_to_fp8(GPT(cfg))
    state = model.fp8_scaling.on(torch.device("cpu"))
    state.amax_current[1, Slot.GELU_OUTPUT] = 3.0
    state.measured["forward"] = True
    state.roll()
    state.amax_current[0, Slot.MLP_INPUT] = 5.0
    state.inv_scale[1, Slot.QKV_WEIGHT] = 0.25
    buffer = io.BytesIO()
    torch.save(fp8.state_of(model), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert saved["calibrated_forward"] == 1 and saved["calibrated_backward"] == 0
    other = fp8.convert_to_fp8(GPT(cfg))
    fp8.load_state(other, saved)
    restored = other.fp8_scaling.state
    assert restored.amax_previous[1, Slot.GELU_OUTPUT] == 3.0 and restored.amax_current[0, Slot.MLP_INPUT] == 5.0
    assert restored.inv_scale[1, Slot.QKV_WEIGHT] == 0.25
    assert restored.calibrated == {"forward": True, "backward": False}
    fp8.load_state(other, None)  # nothing saved: nothing to restore
    with pytest.raises(Gpt2pipeError, match="not converted to fp8"):
        fp8.load_state(GPT(cfg), saved)
    with pytest.raises(Gpt2pipeError, match="does not fit"):
        fp8.load_state(fp8.convert_to_fp8(GPT(ModelConfig(n_layer=3, n_head=2, n_embd=32, block_size=16))), saved)


def test_fp8_forwards_outside_training_read_the_scales_without_writing_them():
    from gpt2pipe.ops import fp8

    scaling = fp8.Fp8Scaling(2)
    cpu = torch.device("cpu")
    live = scaling.for_forward(cpu, training=True)
    assert scaling.for_forward(cpu, training=False) is not live  # eval mode
    with torch.no_grad():
        view = scaling.for_forward(cpu, training=True)  # no gradients: validation in train mode
    assert view is not live and view is scaling.for_forward(cpu, training=False)
    assert view.amax_previous is live.amax_previous  # the same scales
    view.amax_current.fill_(7.0)
    view.inv_scale.fill_(0.5)
    view.measured["forward"] = True
    assert live.amax_current.eq(0).all() and live.inv_scale.eq(1).all() and not live.measured["forward"]
    live.amax_current.fill_(2.0)
    live.measured["forward"] = True
    live.roll()
    assert view.amax_previous.eq(2.0).all() and view.calibrated["forward"]  # it follows training


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
    out = Encoder.apply(idx, wte, wpe)
    ref = R.encoder(idx, wte.float(), wpe.float())
    assert rel(out, ref) < 1e-2
    g = torch.randn_like(out)
    d_ours = grads_of(out, (wte, wpe), g)
    d_ref = grads_of(ref, (wte, wpe), g.float())
    for a, b in zip(d_ours, d_ref):
        assert rel(a, b) < 1e-2
    again = grads_of(Encoder.apply(idx, wte, wpe), (wte, wpe), g)
    assert all(torch.equal(a, b) for a, b in zip(d_ours, again))  # deterministic backward


@gpu
@pytest.mark.parametrize("N,C", [(8192, 768), (77, 100), (5, 1600), (1, 32)])
def test_layernorm_with_and_without_residual(N, C):
    torch.manual_seed(0)
    x, r = leaf(N, C), leaf(N, C, scale=3.0)
    w, b = leaf(C, scale=0.5), leaf(C, scale=0.5)
    out = LayerNorm.apply(x, w, b)
    ref = R.layernorm(x.float(), w.float(), b.float())
    assert rel(out, ref) < 1e-2
    g = torch.randn_like(out)
    for a, c in zip(grads_of(out, (x, w, b), g), grads_of(ref, (x, w, b), g.float())):
        assert rel(a, c) < 2e-2
    res, out = ResidualLayerNorm.apply(r, x, w, b)
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
    out = BiasGelu.apply(h, bias)
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
    out = LinearBias.apply(x, w, b)
    ref = torch.nn.functional.linear(x.float(), w.float(), b.float())
    assert rel(out, ref) < 1e-2
    g = torch.randn_like(out)
    for a, c in zip(grads_of(out, (x, w, b), g), grads_of(ref, (x, w, b), g.float())):
        assert rel(a, c) < 2e-2


def test_packed_qkv_attention_autograd_without_a_gpu(monkeypatch):
    """QkvAttention's own backward (SDPA's autograd as a graph of its own, then the qkv projection's three
    dW GEMMs and accumulating dx) in float64 on the CPU, against autograd of linear -> split -> SDPA; it is
    left out without gradients and for packed=False (activation checkpointing), and the fp8 projection's
    stand-in keeps its weight gradients on that unpacked path."""
    for ops in (attention_ops, linear_ops):
        monkeypatch.setattr(ops, "use_kernels", lambda *t: True)
    monkeypatch.setattr(linear_ops, "bias_grad", column_sums)
    torch.manual_seed(0)
    B, T, C, H = 2, 16, 32, 4
    x = torch.randn(B, T, C, dtype=torch.float64, requires_grad=True)
    w = (torch.randn(3 * C, C, dtype=torch.float64) * 0.2).requires_grad_()
    b = torch.randn(3 * C, dtype=torch.float64, requires_grad=True)

    def reference():
        qkv = torch.nn.functional.linear(x, w, b)
        q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in qkv.split(C, dim=2))
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(
            B, T, C)

    ref = reference()
    g = torch.randn_like(ref)
    want = torch.autograd.grad(ref, (x, w, b), g)
    out = qkv_attention(x, w, b, H)
    assert type(out.grad_fn).__name__ == "QkvAttentionBackward"
    torch.testing.assert_close(out, ref)
    for got, exp in zip(torch.autograd.grad(out, (x, w, b), g), want):
        torch.testing.assert_close(got, exp)
    unpacked = qkv_attention(x, w, b, H, packed=False)
    assert "QkvAttention" not in type(unpacked.grad_fn).__name__
    with torch.no_grad():
        assert qkv_attention(x, w, b, H).grad_fn is None
    projected = qkv_attention(x, w, b, H, lambda: torch.nn.functional.linear(x, w, b).detach(), packed=False)
    for got, exp in zip(torch.autograd.grad(projected, (x, w, b), g), want):
        torch.testing.assert_close(got, exp)


def column_sums(dy, out=None):
    """The column-sum kernel's reference (linear.bias_grad)."""
    return dy.sum(0) if out is None else out.copy_(dy.sum(0))


def test_bias_gradients_from_the_weight_gradient_gemm_land_where_the_column_sums_did(monkeypatch):
    """With FUSIONS["bgrad_epilogue"] the qkv projection's q, k and v blocks and the output projection each
    take dW and db from one call into their own blocks (cuBLASLt's BGRADB GEMM, here a float64 stand-in that
    writes into the blocks it is given, on the CPU): the gradients equal the column-sum path's, and each call
    received the blocks of the one dW and db autograd returns. Without the switch the stand-in is not called."""
    calls = []

    def fused(dy, x, dw=None, db=None):
        calls.append((dw, db))
        dw = torch.mm(dy.t(), x, out=dw) if dw is not None else dy.t() @ x
        return dw, column_sums(dy, db)

    for ops in (attention_ops, linear_ops):
        monkeypatch.setattr(ops, "use_kernels", lambda *t: True)
    monkeypatch.setattr(linear_ops, "bias_grad", column_sums)
    monkeypatch.setattr(linear_ops.cublaslt, "usable", lambda *t: True)
    monkeypatch.setattr(linear_ops.cublaslt, "weight_bias_grad", fused)
    torch.manual_seed(0)
    B, T, C, H = 2, 16, 32, 4
    x = torch.randn(B, T, C, dtype=torch.float64, requires_grad=True)
    w = (torch.randn(3 * C, C, dtype=torch.float64) * 0.2).requires_grad_()
    b = torch.randn(3 * C, dtype=torch.float64, requires_grad=True)
    pw = (torch.randn(C, C, dtype=torch.float64) * 0.2).requires_grad_()
    pb = torch.randn(C, dtype=torch.float64, requires_grad=True)

    def grads(fused_on: bool):
        monkeypatch.setitem(FUSIONS, "bgrad_epilogue", fused_on)
        out = LinearBias.apply(qkv_attention(x, w, b, H), pw, pb)
        return torch.autograd.grad(out, (x, w, b, pw, pb), torch.ones_like(out))

    plain = grads(False)
    assert calls == []
    for got, exp in zip(grads(True), plain):
        torch.testing.assert_close(got, exp)
    assert len(calls) == 4  # q, k, v blocks, then the output projection's own tensors
    for i, (dw, db) in enumerate(calls[1:]):  # backward runs the projection first
        assert dw.shape == (C, C) and db.shape == (C,)
        assert dw.untyped_storage().data_ptr() == calls[1][0].untyped_storage().data_ptr()
        assert dw.storage_offset() == i * C * C and db.storage_offset() == i * C
    assert calls[0] == (None, None)


@pytest.mark.parametrize("recompute", [False, True])
def test_recompute_keeps_the_packed_qkv_attention_out(monkeypatch, recompute):
    """Under activation checkpointing (train.recompute) the model asks for the unpacked attention: the
    packed one's inner autograd graph would be recomputed twice and its tensors kept (see qkv_attention)."""
    asked = []

    def spy(*args, **kwargs):
        asked.append(args[5] if len(args) > 5 else kwargs.get("packed", True))
        return qkv_attention(*args, **kwargs)

    monkeypatch.setattr(kernels_path, "qkv_attention", spy)
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16)
    model = GPT(cfg, ops="kernels", recompute=recompute)
    x = torch.randint(0, cfg.vocab_size, (2, 16))
    model(x, x)[1].backward()
    assert asked and set(asked) == {not recompute}


@gpu
@pytest.mark.parametrize("N,K,M", [(65536, 768, 2304), (4096, 3072, 768), (33, 24, 40), (5, 7, 9)])
def test_weight_and_bias_gradients_in_one_gemm(N, K, M, monkeypatch):
    """linear.weight_bias_grad with the BGRADB epilogue on: dW and db against fp32, at GPT-2's token count and
    odd shapes (5 x 7 -> 9 is not one cuBLASLt takes: the column-sum path answers), into given blocks too."""
    from gpt2pipe.ops import cublaslt

    if not cublaslt.available():
        pytest.skip("no cuBLASLt here")
    monkeypatch.setitem(FUSIONS, "bgrad_epilogue", True)
    torch.manual_seed(0)
    dy = torch.randn(N, M, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
    want_w, want_b = dy.float().t() @ x.float(), dy.float().sum(0)
    dw, db = linear_ops.weight_bias_grad(dy, x)
    assert rel(dw, want_w) < 1e-2 and rel(db, want_b) < 1e-2
    if N >= 4096:  # GPT-2's shapes take the epilogue (a small odd one may fall back, with a warning)
        assert FUSIONS["bgrad_epilogue"]
    if cublaslt.usable(dy, x):  # the epilogue itself, not the fallback
        dw, db = cublaslt.weight_bias_grad(dy, x)
        assert rel(dw, want_w) < 1e-2 and rel(db, want_b) < 1e-2
    big_w, big_b = torch.zeros(2 * M, K, device="cuda", dtype=torch.bfloat16), torch.zeros(2 * M, device="cuda",
                                                                                           dtype=torch.bfloat16)
    linear_ops.weight_bias_grad(dy, x, big_w[M:], big_b[M:])
    assert rel(big_w[M:], want_w) < 1e-2 and rel(big_b[M:], want_b) < 1e-2
    assert not big_w[:M].any() and not big_b[:M].any()


@gpu
@pytest.mark.parametrize("cudnn_first", [True, False], ids=["cudnn", "default"])
def test_model_gradients_with_bias_gradients_in_the_gemms(cudnn_first, monkeypatch):
    """A GPT-2 step on the kernels path (packed qkv, GELU epilogues, output projections): the bias gradients
    from the weight-gradient GEMMs' epilogue match those from the column-sum kernel, and every other gradient
    stays what it was (the same math; cuBLASLt may sum dW in another order). Every bias of the blocks came
    through the epilogue: 6 calls per layer (q, k, v, attention projection, fc, MLP projection), under cuDNN
    attention first (training's order) and torch's default order, whose dq, dk, dv may be laid out otherwise."""
    import contextlib

    from gpt2pipe.device import sdpa_fastest_first
    from gpt2pipe.ops import cublaslt

    if not cublaslt.available():
        pytest.skip("no cuBLASLt here")
    calls = []
    real = cublaslt.weight_bias_grad
    monkeypatch.setattr(cublaslt, "weight_bias_grad", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_head=4, n_embd=128, block_size=64)
    model = GPT(cfg, ops="kernels").cuda().bfloat16()
    x = torch.randint(0, 50257, (8, 64), device="cuda")

    def grads(bgrad: bool):
        monkeypatch.setitem(FUSIONS, "bgrad_epilogue", bgrad)
        model.zero_grad(set_to_none=True)
        with sdpa_fastest_first() if cudnn_first else contextlib.nullcontext():
            model(x, x)[1].backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = grads(False)
    assert calls == []
    fused = grads(True)
    assert len(calls) == 6 * cfg.n_layer and FUSIONS["bgrad_epilogue"]
    for name, g in fused.items():
        assert rel(g, plain[name]) < 1e-2, name


@gpu
@pytest.mark.parametrize("N,C,H", [(4096, 768, 3072), (40, 64, 256)])
def test_mlp_with_gelu_in_the_gemm_epilogues(N, C, H):
    """GPT-2's MLP on the kernels path (bias+GELU in the fc GEMM's epilogue, GELU's derivative and the fc
    bias gradient in the epilogue of the GEMM that makes their input gradient) against fp32 autograd."""
    from gpt2pipe.ops import cublaslt

    if not cublaslt.available():
        pytest.skip("no cuBLASLt here")
    torch.manual_seed(0)
    x = leaf(N, C)
    fc_w, fc_b, proj_w, proj_b = leaf(H, C, scale=0.05), leaf(H, scale=0.5), leaf(C, H, scale=0.05), leaf(C)
    out = mlp(x, fc_w, fc_b, proj_w, proj_b)
    assert type(out.grad_fn).__name__ == "EpilogueMlpBackward"  # the fused path ran, not the fallback
    params = (x, fc_w, fc_b, proj_w, proj_b)
    ref = torch.nn.functional.linear(torch.nn.functional.gelu(
        torch.nn.functional.linear(x.float(), fc_w.float(), fc_b.float()), approximate="tanh"),
        proj_w.float(), proj_b.float())
    assert rel(out, ref) < 1e-2
    g = torch.randn_like(out)
    for a, c in zip(grads_of(out, params, g), grads_of(ref, params, g.float())):
        assert rel(a, c) < 2e-2


@gpu
@pytest.mark.parametrize("B,T,C,n_head", [(4, 256, 768, 12), (2, 64, 128, 2)])
@pytest.mark.parametrize("cudnn_first", [True, False], ids=["cudnn", "default"])
def test_packed_qkv_attention(B, T, C, n_head, cudnn_first):
    """qkv projection + causal attention with the projection's backward reading dq, dk, dv where SDPA left
    them, against fp32 autograd of linear -> split -> SDPA; under cuDNN first (training's order) and torch's
    default backend order."""
    import contextlib

    from gpt2pipe.device import sdpa_fastest_first

    torch.manual_seed(0)
    x, w, b = leaf(B, T, C), leaf(3 * C, C, scale=0.05), leaf(3 * C, scale=0.1)
    with sdpa_fastest_first() if cudnn_first else contextlib.nullcontext():
        out = qkv_attention(x, w, b, n_head)
    assert type(out.grad_fn).__name__ == "QkvAttentionBackward"
    qkv = torch.nn.functional.linear(x.float(), w.float(), b.float())
    q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in qkv.split(C, dim=2))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
    assert rel(out, ref) < 1e-2
    g = torch.randn_like(out)
    for a, c in zip(grads_of(out, (x, w, b), g), grads_of(ref, (x, w, b), g.float())):
        assert rel(a, c) < 2e-2


@gpu
@pytest.mark.parametrize("N,C,V,Vp", [(4096, 768, 50257, 50304), (37, 64, 1001, 1008), (1, 16, 8, 8)])
def test_fused_classifier(N, C, V, Vp, monkeypatch):
    monkeypatch.setattr(classifier_ops, "CLASSIFIER_CHUNK", 1024)  # several chunks even at test sizes
    torch.manual_seed(0)
    h, w = leaf(N, C), leaf(Vp, C, scale=0.1)
    t = torch.randint(0, V, (N,), device="cuda")
    loss = FusedClassifier.apply(h, w, t, V, True)
    ref = R.classifier(h.float(), w.float(), t, V)
    assert abs(loss.item() - ref.item()) / ref.item() < 5e-3
    ours = torch.autograd.grad(loss * 0.5, (h, w))
    refs = torch.autograd.grad(ref * 0.5, (h, w))
    for a, c in zip(ours, refs):
        assert rel(a, c) < 3e-2
    assert ours[1][V:].abs().sum() == 0  # padded rows get no gradient
    with torch.no_grad():
        assert fused_classifier(h, w, t, V).item() == pytest.approx(loss.item(), rel=1e-6)


@gpu
def test_global_norm_and_adamw_match_reference():
    from gpt2pipe.ops.flat_adamw import FlatAdamW

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
    from gpt2pipe.ops.flat_adamw import FlatAdamW

    def rounded(seed: int) -> FlatAdamW:
        torch.manual_seed(0)
        lin = torch.nn.Linear(4096, 256, bias=False).cuda()
        opt = FlatAdamW(lin, lr=1e-4, weight_decay=0.0, grad_clip=0.0, stochastic_rounding=True, seed=seed)
        opt.grads.fill_(1e-3)
        opt.step()
        return opt

    a, same, other = rounded(1), rounded(1), rounded(2)
    assert torch.equal(a.master, other.master)  # the fp32 update does not depend on the seed
    err = a.params.float() - a.master
    assert err.abs().max() > 0 and abs(err.mean().item()) < 1e-3 * err.abs().mean().item() + 1e-7
    assert torch.equal(a.params, same.params)  # same seed: the same rounding
    differ = (a.params != other.params).float().mean().item()
    assert differ > 0.1, differ  # another seed: other roundings (most elements sit between two bf16s)


@gpu
def test_training_steps_with_kernels_match_the_torch_reference():
    from gpt2pipe.train.optim import make_flat_optimizer, make_optimizer, optimizer_step
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
        n_ref = optimizer_step(opt_ref, 1e-3)
        n_ours = optimizer_step(opt_ours, 1e-3)
        assert l_ours.item() == pytest.approx(l_ref.item(), rel=2e-2), step
        assert n_ours.item() == pytest.approx(n_ref.item(), rel=5e-2), step


@gpu
def test_recompute_gives_the_same_gradients(monkeypatch):
    """Recompute runs the unpacked attention (QkvAttention stays out of checkpointing), so its gradients equal
    bit for bit those of the plain step on that path, and the packed-qkv step's to bf16 summation order."""
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_head=4, n_embd=128, block_size=64)
    a = GPT(cfg, ops="kernels").cuda().bfloat16()
    b = GPT(cfg, ops="kernels", recompute=True).cuda().bfloat16()
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, 50257, (4, 64), device="cuda")

    def grads(model, packed_qkv: bool):
        monkeypatch.setitem(FUSIONS, "packed_qkv", packed_qkv)
        model.zero_grad(set_to_none=True)
        loss = model(x, x)[1]
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters()]

    (la, ga), (lb, gb) = grads(a, False), grads(b, True)  # b ignores the switch: recompute is unpacked anyway
    assert la == lb
    assert all(torch.equal(g, h) for g, h in zip(ga, gb))
    lp, gp = grads(a, True)
    assert lp == la  # the forward is the same math; only the backward's GEMMs split differently
    for g, h in zip(gp, gb):
        assert rel(g, h) < 1e-2


@gpu
@pytest.mark.parametrize("use_fp8", [False, True], ids=["bf16", "fp8"])
def test_kernels_training_resumes_bit_exactly(tmp_path, monkeypatch, use_fp8):
    """The CLI's training loop on the kernels path, bf16 and fp8 (whose scaling state is saved with the
    training state and not moved by the in-training validation): a crash and --resume reproduce the
    uninterrupted run bit for bit."""
    if use_fp8 and not has_fp8_gemms():
        pytest.skip("fp8 needs an sm_89+ GPU")
    from conftest import build_shards, crash_then_resume, tiny_config

    from gpt2pipe import config
    from gpt2pipe.model import checkpoint
    from gpt2pipe.train import loop as train_mod

    raw = tiny_config(tmp_path)
    raw["train"].update(device="cuda", ops="kernels", fp8=use_fp8)
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


fp8_gpu = pytest.mark.skipif(not torch.cuda.is_available() or not has_fp8_gemms(),
                             reason="fp8 needs an sm_89+ GPU")


@gpu
@fp8_gpu
def test_fp8_casts_scale_by_powers_of_two_and_record_amax():
    from gpt2pipe.ops import fp8
    from gpt2pipe.ops.fp8 import Slot

    torch.manual_seed(0)
    state = fp8.Fp8State(1, torch.device("cuda"), "e5m2")  # gradient slots in e5m2, as cast below
    x = (torch.randn(4096, 768, device="cuda") * 3e-5).bfloat16()  # gradient-sized values
    grad = state.target(0, Slot.MLP_OUTPUT_GRAD)
    state.amax_previous[0, Slot.MLP_OUTPUT_GRAD] = x.abs().max().float()
    assert grad.dtype == fp8.E5M2
    x8 = grad.cast(x, grad.dtype)
    inv = grad.inv_scale.item()
    assert inv == 2.0 ** round(torch.log2(torch.tensor(inv)).item())  # a power of two: exact to undo
    assert grad.amax_current.item() == x.abs().max().item()
    assert rel(x8.float() * inv, x.float()) < 0.1  # e5m2: 2 mantissa bits
    assert x8.float().abs().max().item() <= 57344 / 2  # headroom kept

    w = (torch.randn(3072, 768, device="cuda") * 0.02).bfloat16()
    weight = state.target(0, Slot.FC_WEIGHT)
    w8, w8t = weight.weight_copies(w)
    assert torch.equal(w8t.view(torch.uint8), w8.t().contiguous().view(torch.uint8))
    assert rel(w8.float() * weight.inv_scale.item(), w.float()) < 0.05  # e4m3: 3 mantissa bits

    # LayerNorm writes the e4m3 copy of its output itself, scaled from the slot's previous amax
    res, xin = leaf(512, 768), leaf(512, 768)
    ln_w, ln_b = leaf(768), leaf(768)
    qkv_input = state.target(0, Slot.QKV_INPUT)
    state.amax_previous[0, Slot.QKV_INPUT] = 4.0
    _, out, out8 = residual_layernorm(res, xin, ln_w, ln_b, qkv_input)
    assert rel(out8.float() * qkv_input.inv_scale.item(), out.float()) < 0.05
    assert qkv_input.amax_current.item() == pytest.approx(out.float().abs().max().item(), rel=1e-2)

    big = torch.full((64, 16), 1e4, device="cuda").bfloat16()  # grew past its delayed scale: saturates
    state.amax_previous[0, Slot.MLP_INPUT] = 1.0
    assert torch.isfinite(state.target(0, Slot.MLP_INPUT).cast(big, fp8.E4M3).float()).all()


@gpu
@fp8_gpu
def test_fp8_head_logits_track_the_bf16_classifier():
    """The fp8 LM head (logits GEMM from e4m3 copies of h and W, each scaled by its own amax) against the
    bf16 fused classifier on the same h, W and targets: loss and both gradients."""
    from gpt2pipe.ops import fp8

    torch.manual_seed(0)
    N, C, V, Vp = 4096, 768, 50257, 50304
    h, w = leaf(N, C), leaf(Vp, C, scale=0.02)
    targets = torch.randint(0, V, (N,), device="cuda")
    head = fp8.Fp8Head(torch.nn.Linear(C, Vp, bias=False).cuda())
    head.weight = torch.nn.Parameter(w.detach())  # the same storage: the head casts what the classifier reads
    logits_of = head.projection(h)
    assert logits_of is not None
    loss8 = fused_classifier(h, w, targets, V, logits_of)
    loss = fused_classifier(h, w, targets, V)
    assert loss8.item() == pytest.approx(loss.item(), rel=2e-3)
    for a, b in zip(grads_of(loss8, (h, w), None), grads_of(loss, (h, w), None)):
        assert rel(a, b) < 0.05
    head.eval()
    assert head.projection(h) is None  # evaluation keeps the bf16 logits


def _mlp_case(C: int = 768, M: int = 4096):
    """GPT-2's MLP at width C on M tokens (seeded): (h, w_fc, b_fc, w_pr, b_pr), an output gradient dy, and the
    bf16 torch MLP's output and gradients."""
    torch.manual_seed(0)
    h = leaf(M, C)
    w_fc, b_fc = leaf(4 * C, C, scale=0.02), leaf(4 * C, scale=0.02)
    w_pr, b_pr = leaf(C, 4 * C, scale=0.02), leaf(C, scale=0.02)
    inputs = (h, w_fc, b_fc, w_pr, b_pr)
    dy = torch.randn(M, C, device="cuda").bfloat16() * 1e-4
    want_y = R.bias_gelu(h @ w_fc.t(), b_fc) @ w_pr.t() + b_pr
    return inputs, dy, want_y, grads_of(want_y, inputs, dy)


@gpu
@fp8_gpu
def test_fp8_mlp_calibrates_in_bf16_then_tracks_the_bf16_mlp():
    from gpt2pipe.ops import fp8
    from gpt2pipe.ops.fp8 import Slot
    from gpt2pipe.ops.fp8.gemms import Fp8MlpFunction

    inputs, dy, want_y, want = _mlp_case()
    h, w_fc, b_fc, w_pr, b_pr = inputs
    state = fp8.Fp8State(1, torch.device("cuda"))
    for micro_step in range(3):
        state.roll()
        y = Fp8MlpFunction.apply(h, None, w_fc, b_fc, w_pr, b_pr, state, 0)
        got = grads_of(y, inputs, dy)
        if micro_step == 0:  # no amax yet: bf16 (our kernels), measuring
            assert rel(y, want_y) < 1e-2 and all(rel(g, w) < 2e-2 for g, w in zip(got, want))
        else:
            assert rel(y, want_y) < 0.06
            assert all(rel(g, w) < 0.1 for g, w in zip(got, want)), [rel(g, w) for g, w in zip(got, want)]
    assert state.calibrated == {"forward": True, "backward": True}
    slots = [Slot.MLP_INPUT, Slot.GELU_OUTPUT, Slot.MLP_OUTPUT_GRAD, Slot.PRE_GELU_GRAD, Slot.FC_WEIGHT,
             Slot.PROJ_WEIGHT]
    assert (state.amax_previous[0, slots] > 0).all()


@gpu
@fp8_gpu
def test_fp8_mlp_with_e4m3_gradients_is_closer_to_bf16():
    """train.fp8_gradients: e4m3: both gradients the MLP's input-gradient GEMMs read (the one arriving at
    its output, cast here, and GELU's, written by the bias+GELU backward kernel) are e4m3 copies, and the
    input gradient lands nearer the bf16 MLP's than with e5m2 (one more mantissa bit), and so does the fc
    weight gradient made from it; the forward and the proj gradients (from the bf16 dy) are the same."""
    from gpt2pipe.ops import fp8
    from gpt2pipe.ops.fp8 import Slot
    from gpt2pipe.ops.fp8.gemms import Fp8MlpFunction
    from gpt2pipe.ops.mlp import bias_gelu_backward

    inputs, dy, _, want = _mlp_case()
    h, w_fc, b_fc, w_pr, b_pr = inputs
    C, M = w_pr.shape[0], h.shape[0]
    runs = {}
    for gradients in ("e5m2", "e4m3"):
        state = fp8.Fp8State(1, torch.device("cuda"), gradients)
        for _ in range(2):  # the first micro-step calibrates
            state.roll()
            y = Fp8MlpFunction.apply(h, None, w_fc, b_fc, w_pr, b_pr, state, 0)
            got = grads_of(y, inputs, dy)
        runs[gradients] = y, got, state
    (y5, g5, s5), (y4, g4, s4) = runs["e5m2"], runs["e4m3"]
    assert torch.equal(y4, y5)
    assert torch.equal(g4[3], g5[3]) and torch.equal(g4[4], g5[4])
    errors = [(rel(a, w), rel(b, w)) for a, b, w in zip(g4, g5, want)]
    assert errors[0][0] < 0.8 * errors[0][1], errors
    assert errors[1][0] < errors[1][1], errors
    assert s4.target(0, Slot.PRE_GELU_GRAD).dtype == fp8.E4M3 and s5.target(0, Slot.PRE_GELU_GRAD).dtype == fp8.E5M2
    assert s4.target(0, Slot.MLP_INPUT).dtype == fp8.E4M3 == s5.target(0, Slot.MLP_INPUT).dtype
    # the kernel's e4m3 copy of GELU's gradient is that gradient, scaled (e4m3: 3 mantissa bits)
    pre, dout = leaf(M, 4 * C), torch.randn(M, 4 * C, device="cuda").bfloat16() * 1e-4
    target = s4.target(0, Slot.PRE_GELU_GRAD)
    dpre, _, dpre8 = bias_gelu_backward(dout, pre, b_fc, target)
    assert dpre8.dtype == fp8.E4M3
    assert rel(dpre8.float() * target.inv_scale.item(), dpre.float()) < 0.05
    with pytest.raises(Gpt2pipeError, match="e3m4"):
        fp8.Fp8State(1, "cpu", "e3m4")


def _fp8_pair(cfg):
    """A bf16 kernels model and an fp8-converted copy of it, with their flat AdamW optimizers."""
    from gpt2pipe.ops import fp8
    from gpt2pipe.ops.flat_adamw import FlatAdamW

    torch.manual_seed(0)
    bf = GPT(cfg, ops="kernels").cuda()
    f8 = GPT(cfg, ops="kernels").cuda()
    f8.load_state_dict(bf.state_dict())
    fp8.convert_to_fp8(f8)
    return (bf, FlatAdamW(bf, lr=1e-3, stochastic_rounding=False)), (f8, FlatAdamW(f8, lr=1e-3, stochastic_rounding=False))


def _train_step(model, opt, x, y) -> float:
    loss = model(x, y)[1]
    loss.backward()
    opt.step(1e-3)
    opt.zero_grad()
    return loss.item()


@gpu
@fp8_gpu
def test_fp8_training_follows_bf16_training():
    cfg = ModelConfig(n_layer=2, n_head=4, n_embd=128, block_size=64)
    pair = _fp8_pair(cfg)
    data = torch.randint(0, 50257, (4, 16, 65), device="cuda")  # 4 batches, seen 5 times: the loss falls
    losses = [[_train_step(model, opt, data[step % 4, :, :-1], data[step % 4, :, 1:]) for model, opt in pair]
              for step in range(20)]
    f8 = pair[1][0]
    assert f8.fp8_scaling.state.calibrated == {"forward": True, "backward": True}
    for step, (l_bf, l_f8) in enumerate(losses):
        assert l_f8 == pytest.approx(l_bf, rel=2e-2), (step, losses)
    assert losses[-1][1] < losses[0][1] - 1.0


@gpu
@fp8_gpu
def test_fp8_validation_leaves_the_training_scales_alone():
    from gpt2pipe.ops import fp8

    cfg = ModelConfig(n_layer=2, n_head=4, n_embd=128, block_size=64)
    (_, _), (model, opt) = _fp8_pair(cfg)
    data = torch.randint(0, 50257, (3, 16, 65), device="cuda")
    for step in range(3):
        _train_step(model, opt, data[step, :, :-1], data[step, :, 1:])
    before = fp8.state_of(model)

    def unchanged():
        after = fp8.state_of(model)
        return all(torch.equal(before[k], after[k]) if isinstance(before[k], torch.Tensor) else before[k] == after[k]
                   for k in before)

    model.eval()
    with torch.no_grad():
        val = model(data[0, :, :-1], data[0, :, 1:])[1].item()
    model.train()
    with torch.no_grad():
        model(data[1, :, :-1], data[1, :, 1:])
    assert unchanged()
    with torch.no_grad():  # the read-only view runs the same fp8 forward training would run now
        again = model.eval()(data[0, :, :-1], data[0, :, 1:])[1].item()
    model.train()
    assert again == val
    _train_step(model, opt, data[0, :, :-1], data[0, :, 1:])
    assert not unchanged()  # a training forward does move them: the check above can fail


@gpu
@fp8_gpu
def test_fp8_training_resumes_bit_exactly_from_its_saved_state(tmp_path):
    from gpt2pipe.ops import fp8
    from gpt2pipe.ops.flat_adamw import FlatAdamW

    cfg = ModelConfig(n_layer=2, n_head=4, n_embd=128, block_size=64)
    (_, _), (model, opt) = _fp8_pair(cfg)
    data = torch.randint(0, 50257, (8, 16, 65), device="cuda")
    batches = [(data[i, :, :-1], data[i, :, 1:]) for i in range(8)]
    for x, y in batches[:4]:
        _train_step(model, opt, x, y)
    torch.save({"model": model.state_dict(), "optimizer": opt.gathered_state(), "fp8": fp8.state_of(model)},
               tmp_path / "state.pt")
    straight = [_train_step(model, opt, x, y) for x, y in batches[4:]]

    def resumed(with_fp8_state: bool) -> list[float]:
        saved = torch.load(tmp_path / "state.pt", weights_only=True)
        other = fp8.convert_to_fp8(GPT(cfg, ops="kernels").cuda())
        other_opt = FlatAdamW(other, lr=1e-3, stochastic_rounding=False)
        other.load_state_dict(saved["model"])
        other_opt.load_state_dict(saved["optimizer"])
        if with_fp8_state:
            fp8.load_state(other, saved["fp8"])
        return [_train_step(other, other_opt, x, y) for x, y in batches[4:]]

    assert resumed(with_fp8_state=True) == straight
    assert resumed(with_fp8_state=False) != straight  # calibrating afresh differs: the state matters


def test_every_launch_in_the_code_names_a_real_kernel_and_its_parameters():
    """Static check of each launch("file", "kernel", grid, block, ...) call in the package, bench and
    dev/kernels: the kernel exists, keywords are parameter names, and the count fits (GPU-only code paths
    are thereby checked on CPU too)."""
    import re

    import gpt2pipe
    from gpt2pipe.ops import cuda

    root = Path(gpt2pipe.__file__).parent
    files = [*root.rglob("*.py"), *(root.parents[1] / "dev" / "kernels").glob("*.py")]
    calls = 0
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "launch"):
                continue
            source, kernel = node.args[0], node.args[1]
            assert isinstance(source, ast.Constant), f"{path}:{node.lineno}: kernel file must be a literal"
            if isinstance(kernel, ast.Constant):
                pattern = re.escape(kernel.value)
            elif isinstance(kernel, ast.JoinedStr):  # f"layernorm_forward{vec}": the parts pick a `_vec[V]` variant
                pattern = "".join(re.escape(v.value) if isinstance(v, ast.Constant) else r"_?vec\d*"
                                  for v in kernel.values)
            elif isinstance(kernel, ast.IfExp) and all(isinstance(b, ast.Constant) for b in (kernel.body, kernel.orelse)):
                names = (kernel.body.value, kernel.orelse.value)  # "a" if ... else "b": both must exist and fit
                missing = [n for n in names if n not in cuda.signatures(source.value)]
                assert not missing, f"{path}:{node.lineno}: no kernel {missing} in {source.value}.cu"
                pattern = "|".join(re.escape(n) for n in names)
            else:  # a name chosen at run time (CAST_KERNELS[dtype]): some kernel of the file must fit
                pattern = r"\w+"
            kernels = {k: p for k, p in cuda.signatures(source.value).items() if re.fullmatch(pattern, k)}
            assert kernels, f"{path}:{node.lineno}: no kernel {pattern} in {source.value}.cu"
            positional = node.args[4:]
            open_ended = any(isinstance(a, ast.Starred) for a in positional) or any(k.arg is None for k in node.keywords)
            keywords = [k.arg for k in node.keywords if k.arg not in (None, "shared_mem")]
            problems = {}
            for name, params in kernels.items():
                names = [p.name for p in params]
                if not set(keywords) <= set(names):
                    problems[name] = f"no parameter {set(keywords) - set(names)}"
                elif not open_ended and len(positional) + len(keywords) != len(params):
                    problems[name] = f"{len(positional) + len(keywords)} arguments for {len(params)} parameters"
                elif set(keywords) & set(names[: len(positional)]):
                    problems[name] = "a parameter given twice"
            fits = len(problems) < len(kernels) if pattern == r"\w+" else not problems
            assert fits, f"{path}:{node.lineno}: {problems}"
            calls += 1
    assert calls >= 20


@gpu
def test_recompute_through_the_training_loop(tmp_path):
    """train.recompute on the kernels path inside `train` itself (its SDPA backend order around forward;
    the recompute in backward ran another backend and checkpointing refused its saved tensors): the losses
    equal the run without recompute to bf16 order."""
    from conftest import build_shards, tiny_config
    from gpt2pipe import config
    from gpt2pipe.report import parse_log
    from gpt2pipe.train.loop import train

    raw = tiny_config(tmp_path, model={"n_layer": 2, "n_head": 2, "n_embd": 128, "block_size": 32},
                      train={"device": "cuda", "ops": "kernels", "max_steps": 4, "checkpoint_every": 4})
    shards = build_shards(config.from_dict(raw))
    losses = {}
    for recompute in (False, True):
        cfg = config.from_dict(dict(raw, train=dict(raw["train"], recompute=recompute)))
        run_dir = tmp_path / f"recompute_{recompute}"
        train(cfg, shards, run_dir, progress=False)
        losses[recompute] = [v for _, v in parse_log(run_dir / "train" / "train.log")["trl"]]
    assert len(losses[True]) == 4
    assert losses[True] == pytest.approx(losses[False], abs=2e-2)
