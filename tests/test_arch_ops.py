"""The LLaMA-style ops of ops/arch.py: our kernels (kernels/rmsnorm.cu, rope.cu, activation.cu) against the
torch references in reference.py.

On CPU: each source compiles with NVRTC into the entry points arch.py launches (bf16 `_vec` ones with real
16-byte accesses); every launch of every op, forward and backward, both dtypes, scalar and 16-byte
variants, is recorded instead of run and its arguments checked against the kernel's C signature; CPU
tensors run the references. On the GPU (`pytest -m gpu tests/test_arch_ops.py`): outputs and gradients
against autograd of the fp32 reference, for bf16 and fp32 inputs."""

import math
import re

import pytest
import torch

from gpt2pipe.ops import arch as A
from gpt2pipe.ops import reference as R

gpu = pytest.mark.gpu
DEVICE = "cuda"  # of the GPU tests' tensors (a CPU emulation of the kernels can run them elsewhere)
DTYPES = [torch.bfloat16, torch.float32]
SUFFIX = {torch.bfloat16: "bf16", torch.float32: "f32"}


def entry_points() -> dict[str, set[str]]:
    """{kernel file: the entry points arch.py may launch}."""
    names: dict[str, set[str]] = {"rmsnorm": set(), "rope": set(), "activation": set()}
    for sfx in SUFFIX.values():
        for vec in ("", "_vec"):
            names["rmsnorm"] |= {f"rmsnorm_forward{vec}_{sfx}", f"rmsnorm_backward{vec}_{sfx}"}
            names["activation"] |= {f"{op}_{way}{vec}_{sfx}" for op in ("swiglu", "relu2")
                                    for way in ("forward", "backward")}
            names["rope"] |= {f"qkv_rope_forward{vec}_{sfx}", f"qkv_rope_backward{vec}_{sfx}"}
    return names


# --- CPU ---


def test_new_sources_compile_into_the_entry_points_arch_launches():
    """(test_kernels.py compiles every source and checks every signature too; this names what arch.py needs.)"""
    pytest.importorskip("cupy", reason="CuPy (with NVRTC) compiles the kernels")
    from gpt2pipe.ops import cuda

    assert {"rmsnorm.cu", "rope.cu", "activation.cu", "typed.cuh"} <= set(cuda.SOURCES)
    assert not cuda.missing_sources()
    for name, wanted in entry_points().items():
        ptx = cuda.compile_check(cuda.kernel_dir() / f"{name}.cu")
        assert set(cuda.ptx_entries(ptx)) == wanted, name
        assert set(cuda.signatures(name)) == wanted, name
        bodies = dict(zip(re.findall(r"\.entry\s+(\w+)", ptx), re.split(r"\.entry\s+\w+", ptx)[1:]))
        for kernel, body in bodies.items():
            wide = len(re.findall(r"ld\.global\.(?:nc\.)?v4\.", body))
            # the _vec entries read 16 bytes at a time (bf16 included: not 4-byte pieces); the others never
            assert (wide > 0) == ("_vec" in kernel), (kernel, wide)


class Recorder:
    """Stands in for cuda.launch on CPU tensors: checks each launch against the kernel's C signature
    (count, pointer dtypes, contiguity, integer ranges) and the launch shape, and records it."""

    def __init__(self):
        self.calls = []

    def __call__(self, name, kernel, grid, block, *args, shared_mem=0, **kwargs):
        from gpt2pipe.ops import cuda

        bound = cuda.kernel_arguments(name, kernel, args, kwargs, require_cuda=False)
        grid = grid if isinstance(grid, tuple) else (grid,)
        block = block if isinstance(block, tuple) else (block,)
        assert all(1 <= g < 2**31 for g in grid), (kernel, grid)
        assert math.prod(block) % 32 == 0 and 32 <= math.prod(block) <= 1024, (kernel, block)
        assert 0 <= shared_mem <= 227 * 1024, (kernel, shared_mem)
        params = dict(zip([p.name for p in cuda.signatures(name)[kernel]], bound))
        self.calls.append((kernel, grid[0], math.prod(block), params, shared_mem))


@pytest.fixture
def recorder(monkeypatch):
    pytest.importorskip("cupy", reason="the signatures come from the kernel sources")
    rec = Recorder()
    monkeypatch.setattr(A, "launch", rec)
    monkeypatch.setattr(A, "sm_count", lambda: 132)
    return rec


def _run_forward_backward(out):
    outs = out if isinstance(out, tuple) else (out,)
    torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])


def _misaligned(*shape, dtype):
    """A contiguous tensor 2 or 4 bytes past a 16-byte boundary: the 16-byte kernels must not take it."""
    flat = torch.zeros(math.prod(shape) + 1, dtype=dtype)
    return flat[1:].view(*shape).requires_grad_()


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp32"])
def test_every_launch_fits_its_kernel_signature(recorder, dtype):
    sfx = SUFFIX[dtype]

    def launched(fn, *inputs):
        recorder.calls.clear()
        _run_forward_backward(fn(*inputs))
        return [c[0] for c in recorder.calls]

    def leaf(*shape, dt=dtype):
        return torch.zeros(*shape, dtype=dt, requires_grad=True)

    # RMSNorm: 16-byte kernels for C a multiple of 16 bytes, scalar ones otherwise or when misaligned
    assert launched(lambda x, w: A.RMSNorm.apply(x, w, 1e-6), leaf(4, 6, 64), leaf(64)) == \
        [f"rmsnorm_forward_vec_{sfx}", f"rmsnorm_backward_vec_{sfx}"]
    assert launched(lambda x: A.RMSNorm.apply(x, None, 1e-6), leaf(5, 37)) == \
        [f"rmsnorm_forward_{sfx}", f"rmsnorm_backward_{sfx}"]
    assert launched(lambda x, w: A.RMSNorm.apply(x, w, 1e-6), _misaligned(3, 64, dtype=dtype), leaf(64)) == \
        [f"rmsnorm_forward_{sfx}", f"rmsnorm_backward_{sfx}"]
    forward, backward = recorder.calls
    assert forward[1] * forward[2] // 32 >= 3  # a warp per row
    assert backward[4] == (backward[2] // 32) * 64 * 4  # dw: a float per column per warp
    assert launched(lambda r, x, w: A.ResidualRMSNorm.apply(r, x, w, 1e-6), leaf(2, 9, 768), leaf(2, 9, 768),
                    leaf(768, dt=torch.bfloat16)) == [f"rmsnorm_forward_vec_{sfx}", f"rmsnorm_backward_vec_{sfx}"]
    assert recorder.calls[1][3]["dres"] != 0 and recorder.calls[1][3]["partials"] != 0
    # no gain: no dw partials, no shared memory
    launched(lambda x: A.RMSNorm.apply(x, None, 1e-6), leaf(4, 64))
    assert recorder.calls[1][3]["w"] == 0 and recorder.calls[1][3]["partials"] == 0 and recorder.calls[1][4] == 0

    # QK-norm + RoPE: GQA, tables longer than T, bf16 tables (a model cast to bf16) handed over as fp32;
    # 16-byte entries where half a row is whole 16-byte accesses (D = 64), `lanes` lanes a (token, head) row
    cos, sin = R.rope_tables(16, 64)
    for qk_norm in (True, False):
        calls = launched(lambda qkv: A.QkvRope.apply(qkv, 8, 2, cos.bfloat16(), sin, qk_norm, 1e-6),
                         leaf(2, 10, 12 * 64))
        assert calls == [f"qkv_rope_forward_vec_{sfx}", f"qkv_rope_backward_vec_{sfx}"]
        forward, backward = recorder.calls
        lanes = 32 // (16 // dtype.itemsize)  # D/2 = 32 elements: 4 accesses of 8 bf16, 8 of 4 fp32
        assert forward[3]["lanes"] == backward[3]["lanes"] == lanes
        assert forward[1] * forward[2] >= 2 * 10 * 12 * lanes
        assert (forward[3]["rstd"] != 0) == qk_norm and (backward[3]["q"] != 0) == qk_norm
        assert forward[3]["S"] == 10 and forward[3]["D"] == 64 and forward[3]["G"] == 2
    # half a row not whole accesses (D = 34), or an input off a 16-byte boundary: a warp per row, 2-byte accesses
    cos34, sin34 = R.rope_tables(16, 34)
    assert launched(lambda qkv: A.QkvRope.apply(qkv, 2, 1, cos34, sin34, True, 1e-6), leaf(2, 5, 4 * 34)) == \
        [f"qkv_rope_forward_{sfx}", f"qkv_rope_backward_{sfx}"]
    assert recorder.calls[0][1] * recorder.calls[0][2] // 32 >= 2 * 5 * 4  # a warp per (token, head)
    assert launched(lambda qkv: A.QkvRope.apply(qkv, 8, 2, cos, sin, True, 1e-6),
                    _misaligned(2, 10, 12 * 64, dtype=dtype))[0] == f"qkv_rope_forward_{sfx}"

    # activations
    assert launched(A.SwiGLU.apply, leaf(3, 4, 2 * 64)) == [f"swiglu_forward_vec_{sfx}", f"swiglu_backward_vec_{sfx}"]
    assert launched(A.SwiGLU.apply, leaf(7, 2 * 13)) == [f"swiglu_forward_{sfx}", f"swiglu_backward_{sfx}"]
    assert launched(A.ReLU2.apply, leaf(6, 64)) == [f"relu2_forward_vec_{sfx}", f"relu2_backward_vec_{sfx}"]
    assert launched(A.ReLU2.apply, leaf(3, 7)) == [f"relu2_forward_{sfx}", f"relu2_backward_{sfx}"]
    assert launched(A.ReLU2.apply, _misaligned(6, 64, dtype=dtype)) == [f"relu2_forward_{sfx}",
                                                                         f"relu2_backward_{sfx}"]


def test_launches_cover_every_entry_point(recorder):
    """Together, the ops launch every kernel the sources define (no dead or unreachable variant)."""
    for dtype in DTYPES:
        for C in (64, 37):
            x = torch.zeros(4, C, dtype=dtype, requires_grad=True)
            _run_forward_backward(A.RMSNorm.apply(x, torch.zeros(C, requires_grad=True), 1e-6))
            _run_forward_backward(A.SwiGLU.apply(torch.zeros(4, 2 * C, dtype=dtype, requires_grad=True)))
            _run_forward_backward(A.ReLU2.apply(torch.zeros(3, C, dtype=dtype, requires_grad=True)))
        for D in (16, 6):  # the 16-byte entries and the scalar ones
            cos, sin = R.rope_tables(4, D)
            _run_forward_backward(A.QkvRope.apply(torch.zeros(1, 4, 3 * D, dtype=dtype, requires_grad=True), 1, 1,
                                                  cos, sin, True, 1e-6))
    seen = {c[0] for c in recorder.calls}
    assert seen == set().union(*entry_points().values())


def _fp32_leaves(inputs):
    return [None if t is None else t.detach().float().requires_grad_(t.requires_grad) for t in inputs]


def test_cpu_tensors_run_the_references_exactly(monkeypatch):
    def no_launch(*args, **kwargs):
        raise AssertionError("a kernel launch on CPU tensors")

    monkeypatch.setattr(A, "launch", no_launch)
    torch.manual_seed(0)
    cos, sin = R.rope_tables(12, 16)
    cases = [
        (A.rmsnorm, R.rmsnorm, lambda dt: (torch.randn(3, 5, 32, dtype=dt), torch.randn(32, dtype=dt)), ()),
        (A.rmsnorm, R.rmsnorm, lambda dt: (torch.randn(3, 32, dtype=dt), None), ()),
        (A.residual_rmsnorm, R.residual_rmsnorm,
         lambda dt: (torch.randn(2, 4, 32, dtype=dt), torch.randn(2, 4, 32, dtype=dt), torch.randn(32, dtype=dt)), ()),
        (A.qkv_rope, R.qkv_rope, lambda dt: (torch.randn(2, 9, 6 * 16, dtype=dt),), (4, 1, cos, sin, True)),
        (A.qkv_rope, R.qkv_rope, lambda dt: (torch.randn(2, 9, 6 * 16, dtype=dt),), (2, 2, cos, sin, False)),
        (A.swiglu, R.swiglu, lambda dt: (torch.randn(3, 4, 2 * 24, dtype=dt),), ()),
        (A.relu2, R.relu2, lambda dt: (torch.randn(3, 4, 24, dtype=dt),), ()),
    ]
    for ours, ref, make, extra in cases:
        for dtype in DTYPES:
            base = make(dtype)
            a = [None if t is None else t.clone().requires_grad_() for t in base]
            b = [None if t is None else t.clone().requires_grad_() for t in base]
            out_a, out_b = ours(*a, *extra), ref(*b, *extra)
            out_a = out_a if isinstance(out_a, tuple) else (out_a,)
            out_b = out_b if isinstance(out_b, tuple) else (out_b,)
            assert all(torch.equal(x, y) for x, y in zip(out_a, out_b)), ours.__name__
            seeds = [torch.randn_like(o) for o in out_a]
            ga = torch.autograd.grad(out_a, [t for t in a if t is not None], seeds)
            gb = torch.autograd.grad(out_b, [t for t in b if t is not None], seeds)
            assert all(torch.equal(x, y) for x, y in zip(ga, gb)), ours.__name__


# --- GPU ---

TOL = {torch.bfloat16: (1e-2, 2e-2), torch.float32: (1e-5, 1e-4)}  # (outputs, gradients): relative L2


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def compare(ours_fn, ref_fn, inputs, dtype, kernel: str | None):
    """ours_fn(*inputs) against ref_fn(*fp32 copies of inputs): every output, then the gradient of every
    input for the same random output gradients; `kernel`: the autograd Function ours_fn must have run.
    Returns ours' outputs and gradients."""
    refs_in = _fp32_leaves(inputs)
    ours = ours_fn(*inputs)
    refs = ref_fn(*refs_in)
    ours, refs = (ours, refs) if isinstance(ours, tuple) else ((ours,), (refs,))
    fwd_tol, bwd_tol = TOL[dtype]
    for i, (a, b) in enumerate(zip(ours, refs)):
        if kernel is not None:
            assert a.grad_fn is not None and a.grad_fn.name() == f"{kernel}Backward", a.grad_fn
        assert a.shape == b.shape and a.dtype == dtype and a.is_contiguous(), (i, a.shape, a.dtype)
        assert rel(a, b) < fwd_tol, (f"output {i}", rel(a, b))
    seeds = [torch.randn_like(a) for a in ours]
    leaves = [t for t in inputs if t is not None and t.requires_grad]
    ref_leaves = [r for t, r in zip(inputs, refs_in) if t is not None and t.requires_grad]
    d_ours = torch.autograd.grad(ours, leaves, seeds)
    d_refs = torch.autograd.grad(refs, ref_leaves, [s.float() for s in seeds])
    for i, (a, b, t) in enumerate(zip(d_ours, d_refs, leaves)):
        assert a.dtype == t.dtype and a.shape == t.shape, i
        assert rel(a, b) < bwd_tol, (f"gradient {i}", rel(a, b))
    return ours, d_ours


def leaf(*shape, dtype, scale=1.0):
    return (torch.randn(*shape, device=DEVICE) * scale).to(dtype).requires_grad_()


def gain(C, kind, dtype):
    if kind == "none":
        return None
    return leaf(C, dtype=dtype if kind == "same" else torch.float32, scale=0.5).detach().add_(1).requires_grad_()


# (shape, why): 16-byte and scalar kernels, 3-D input, a row wider than 32 lanes x 16 bytes, one row
RMS_SHAPES = [(4096, 768), (2, 64, 768), (77, 100), (5, 37), (64, 8192), (1, 8), (3, 1600)]


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp32"])
@pytest.mark.parametrize("w_kind", ["same", "none", "fp32"])
@pytest.mark.parametrize("shape", RMS_SHAPES, ids=str)
def test_rmsnorm(shape, w_kind, dtype):
    if w_kind == "fp32" and dtype == torch.float32:
        pytest.skip("same as 'same'")
    torch.manual_seed(0)
    C = shape[-1]
    x, w = leaf(*shape, dtype=dtype, scale=2.0), gain(C, w_kind, dtype)
    compare(lambda x, w: A.rmsnorm(x, w), lambda x, w: R.rmsnorm(x, w), [x, w], dtype, "RMSNorm")
    # dw sums rows in a fixed order: the same gradients again, bit for bit
    if w is not None:
        g = torch.randn(shape, device=DEVICE).to(dtype)
        first = torch.autograd.grad(A.rmsnorm(x, w), (x, w), g)
        second = torch.autograd.grad(A.rmsnorm(x, w), (x, w), g)
        assert all(torch.equal(a, b) for a, b in zip(first, second))


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp32"])
@pytest.mark.parametrize("w_kind", ["same", "none"])
@pytest.mark.parametrize("shape", RMS_SHAPES, ids=str)
def test_residual_rmsnorm(shape, w_kind, dtype):
    torch.manual_seed(0)
    C = shape[-1]
    r, x, w = leaf(*shape, dtype=dtype, scale=3.0), leaf(*shape, dtype=dtype), gain(C, w_kind, dtype)
    (res, _), (dr, dx, *_) = compare(lambda r, x, w: A.residual_rmsnorm(r, x, w),
                                     lambda r, x, w: R.residual_rmsnorm(r, x, w), [r, x, w], dtype, "ResidualRMSNorm")
    assert torch.equal(res, r + x)  # the sum as the residual stream stores it (one rounding)
    assert torch.equal(dr, dx)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp32"])
def test_rmsnorm_non_contiguous_and_misaligned_inputs(dtype):
    """A transposed view and a contiguous view 2/4 bytes off a 16-byte boundary (scalar kernels)."""
    torch.manual_seed(0)
    base, w = leaf(768, 96, dtype=dtype), gain(768, "same", dtype)
    compare(lambda b, w: A.rmsnorm(b.t(), w), lambda b, w: R.rmsnorm(b.t(), w), [base, w], dtype, "RMSNorm")
    flat = leaf(96 * 768 + 1, dtype=dtype)
    compare(lambda f, w: A.rmsnorm(f[1:].view(96, 768), w), lambda f, w: R.rmsnorm(f[1:].view(96, 768), w),
            [flat, w], dtype, "RMSNorm")
    r = leaf(96 * 768 + 1, dtype=dtype)
    compare(lambda r, f, w: A.residual_rmsnorm(r[1:].view(96, 768), f[:-1].view(96, 768), w),
            lambda r, f, w: R.residual_rmsnorm(r[1:].view(96, 768), f[:-1].view(96, 768), w),
            [r, flat, w], dtype, "ResidualRMSNorm")


@gpu
def test_other_dtypes_and_empty_inputs():
    """fp16 has no kernel: the reference runs (same values); an empty batch launches nothing."""
    torch.manual_seed(0)
    x, w = leaf(8, 64, dtype=torch.float16), leaf(64, dtype=torch.float16)
    out = A.rmsnorm(x, w)
    assert out.grad_fn.name() != "RMSNormBackward" and torch.equal(out, R.rmsnorm(x, w))
    assert A.swiglu(x).grad_fn.name() != "SwiGLUBackward"
    empty = leaf(0, 64, dtype=torch.bfloat16)
    out = A.rmsnorm(empty, leaf(64, dtype=torch.bfloat16))
    assert out.shape == (0, 64)
    out.sum().backward()
    assert A.relu2(empty).shape == (0, 64) and A.swiglu(empty).shape == (0, 32)


# (B, T, H, G, D, T_max): MHA at GPT-2 124M head size with T < table length; GQA with D = 128; tiny odd
# half-widths (D/2 = 3, 17: the scalar entries); D = 256 (16 lanes a row); T == table length; D = 48 (3 accesses
# of bf16 a half row: 2 lanes, one of them twice — the two-pass QK-norm backward, the others take the one-pass one); D = 16 (one bf16 lane a row: 32 rows a warp)
ROPE_SHAPES = [(2, 64, 12, 12, 64, 128), (2, 33, 8, 2, 128, 64), (1, 7, 3, 1, 6, 7), (3, 5, 4, 4, 34, 16),
               (1, 3, 2, 1, 256, 8), (4, 256, 6, 3, 64, 1024), (2, 5, 3, 1, 48, 8), (1, 4, 2, 2, 16, 4)]


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp32"])
@pytest.mark.parametrize("qk_norm", [True, False], ids=["qknorm", "plain"])
@pytest.mark.parametrize("B,T,H,G,D,T_max", ROPE_SHAPES)
def test_qkv_rope(B, T, H, G, D, T_max, qk_norm, dtype):
    torch.manual_seed(0)
    cos, sin = R.rope_tables(T_max, D, device=DEVICE)
    qkv = leaf(B, T, (H + 2 * G) * D, dtype=dtype, scale=2.0)
    (q, k, v), _ = compare(lambda t: A.qkv_rope(t, H, G, cos, sin, qk_norm),
                           lambda t: R.qkv_rope(t, H, G, cos, sin, qk_norm), [qkv], dtype, "QkvRope")
    assert q.shape == (B, H, T, D) and k.shape == (B, G, T, D) and v.shape == (B, G, T, D)
    # v is copied, not computed: exact
    assert torch.equal(v, qkv.view(B, T, H + 2 * G, D)[:, :, H + G:].transpose(1, 2))


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp32"])
def test_qkv_rope_bf16_tables_and_a_non_contiguous_input(dtype):
    """A model cast with .bfloat16() holds bf16 tables; a qkv sliced out of a wider projection."""
    torch.manual_seed(0)
    B, T, H, G, D = 2, 40, 4, 2, 64
    cos, sin = (t.bfloat16() for t in R.rope_tables(64, D, device=DEVICE))
    wide = leaf(B, T, (H + 2 * G) * D + 24, dtype=dtype)
    compare(lambda t: A.qkv_rope(t[..., 24:], H, G, cos, sin, True),
            lambda t: R.qkv_rope(t[..., 24:], H, G, cos, sin, True), [wide], dtype, "QkvRope")


@gpu
def test_qkv_rope_feeds_sdpa_and_its_gradients():
    """The model's use: q, k, v straight into scaled_dot_product_attention (GQA), the loss's gradient back
    into the packed projection. In bf16 our kernel is held to the reference run in bf16 (both against fp32),
    since bf16 attention adds its own error."""
    torch.manual_seed(0)
    B, T, H, G, D = 2, 128, 8, 2, 64
    cos, sin = R.rope_tables(256, D, device=DEVICE)
    qkv = leaf(B, T, (H + 2 * G) * D, dtype=torch.bfloat16)
    dy = torch.randn(B, H, T, D, device=DEVICE)

    def attend(fn, t):
        t = t.detach().requires_grad_()
        q, k, v = fn(t, H, G, cos, sin, True)
        k, v = (z.repeat_interleave(H // G, dim=1) for z in (k, v))  # GQA without enable_gqa (torch < 2.5)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return out, torch.autograd.grad(out, t, dy.to(out.dtype))[0]

    ours, ref_bf16, ref32 = attend(A.qkv_rope, qkv), attend(R.qkv_rope, qkv), attend(R.qkv_rope, qkv.float())
    for a, b, c in zip(ours, ref_bf16, ref32):
        assert rel(a, c) <= 1.5 * rel(b, c) + 1e-3, (rel(a, c), rel(b, c))

    # the dispatch really ran our kernel there
    assert A.qkv_rope(qkv, H, G, cos, sin, True)[0].grad_fn.name() == "QkvRopeBackward"


RELU2_SHAPES = [(4096, 3072), (33, 7), (1, 1), (2, 3, 8)]
SWIGLU_SHAPES = [(4, 64, 2 * 1536), (7, 2 * 13), (1, 2), (3, 5, 2 * 8), (5, 2 * 4), (2, 3, 2 * 6)]


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp32"])
@pytest.mark.parametrize("op, shape", [("swiglu", x) for x in SWIGLU_SHAPES] + [("relu2", x) for x in RELU2_SHAPES],
                         ids=str)
def test_activation(op, shape, dtype):
    torch.manual_seed(0)
    name = {"swiglu": "SwiGLU", "relu2": "ReLU2"}[op]
    compare(getattr(A, op), getattr(R, op), [leaf(*shape, dtype=dtype, scale=2.0)], dtype, name)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp32"])
def test_swiglu_large_gates_and_misaligned_input(dtype):
    """Gates far into both tails of the sigmoid stay finite; a 2/4-byte-offset input takes the scalar kernel."""
    torch.manual_seed(0)
    h = leaf(64, 2 * 256, dtype=dtype, scale=30.0)
    with torch.no_grad():
        h[0, :4] = torch.tensor([-1e4, 1e4, -90.0, 90.0])
    compare(A.swiglu, R.swiglu, [h], dtype, "SwiGLU")
    flat = leaf(64 * 512 + 1, dtype=dtype)
    compare(lambda f: A.swiglu(f[1:].view(64, 512)), lambda f: R.swiglu(f[1:].view(64, 512)), [flat], dtype, "SwiGLU")
    base = leaf(512, 64, dtype=dtype)  # transposed view
    compare(lambda b: A.swiglu(b.t()), lambda b: R.swiglu(b.t()), [base], dtype, "SwiGLU")




@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp32"])
def test_relu2_exact_and_non_contiguous(dtype):
    """relu(h)^2 is one rounding of an exact fp32 square: equal to torch's; and on transposed/offset views."""
    torch.manual_seed(0)
    h = leaf(300, 40, dtype=dtype)
    assert torch.equal(A.relu2(h), R.relu2(h))
    compare(lambda b: A.relu2(b.t()), lambda b: R.relu2(b.t()), [h], dtype, "ReLU2")
    flat = leaf(300 * 64 + 1, dtype=dtype)
    compare(lambda f: A.relu2(f[1:].view(300, 64)), lambda f: R.relu2(f[1:].view(300, 64)), [flat], dtype, "ReLU2")
