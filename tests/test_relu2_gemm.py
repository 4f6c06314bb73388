"""The speedrun MLP's ReLU^2 GEMMs (ops/relu2_gemm.py, Triton) against cuBLAS + the torch reference, and the
kernels path's fallback when they cannot be built.

GPU (`pytest -m gpu tests/test_relu2_gemm.py`): both epilogue GEMMs at odd shapes (one row, M, N and K no
multiples of a tile or of BLOCK_K), the whole MLP's output and gradients against the unfused path and the fp32
reference, and the unfused path where TMA cannot read the tensors. CPU: the fallback when Triton fails."""

import copy
import warnings

import pytest
import torch

from gpt2pipe.model import kernels_path
from gpt2pipe.model.gpt import MLP
from gpt2pipe.config import ModelConfig
from gpt2pipe.ops import FUSIONS, relu2_gemm
from gpt2pipe.ops import reference as R

gpu = pytest.mark.gpu
# (M, K, N): K and N multiples of 8 (TMA's 16-byte rows), none of a tile (128 x 128/256 x 64)
SHAPES = [(1, 768, 3072), (1000, 104, 296), (77, 40, 200), (4096, 768, 3072), (333, 3072, 768)]


def rel(got, want):
    return ((got.float() - want.float()).norm() / want.float().norm().clamp_min(1e-30)).item()


@gpu
@pytest.mark.parametrize("M,K,N", SHAPES, ids=str)
def test_fc_relu2_writes_the_product_and_its_relu_squared(M, K, N):
    torch.manual_seed(0)
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) / K**0.5
    want = x @ w.t()
    pre, act = relu2_gemm.fc_relu2(x, w)
    assert pre.shape == act.shape == (M, N) and pre.dtype == act.dtype == torch.bfloat16
    assert rel(pre, want) < 5e-3  # bf16 rounding of a differently ordered fp32 sum
    # the epilogue squares the bf16 product it wrote: exactly the unfused activation of that output
    assert torch.equal(act, R.relu2(pre))
    assert (act[want < -0.05] == 0).all()


@gpu
@pytest.mark.parametrize("M,C,F", [(m, n, k) for m, k, n in SHAPES], ids=str)
def test_drelu2_is_the_gradient_through_proj_and_relu_squared(M, C, F):
    torch.manual_seed(1)
    dy = torch.randn(M, C, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(C, F, device="cuda", dtype=torch.bfloat16) / C**0.5  # proj's weight: F -> C
    pre = torch.randn(M, F, device="cuda", dtype=torch.bfloat16)
    g = dy @ w  # what cuBLAS hands the unfused relu2 backward
    want = (g.float() * 2 * pre.float().clamp_min(0)).bfloat16()
    got = relu2_gemm.drelu2(dy, w, pre)
    assert rel(got, want) < 5e-3
    assert (got[pre <= 0] == 0).all()


@gpu
@pytest.mark.parametrize("shape", [(2, 64, 768), (3, 37, 36), (1, 1, 64)], ids=str)
def test_the_fused_mlp_trains_as_the_unfused_one(shape, monkeypatch):
    """Output and all three gradients against the same MLP with the fusion off (cuBLAS + our relu2 kernels)
    and against the fp32 torch reference; a width TMA cannot read (36) runs unfused."""
    torch.manual_seed(2)
    C = shape[-1]
    mlp = MLP(ModelConfig(n_embd=C, n_head=1, mlp="relu2", bias=False)).cuda().bfloat16()
    x = torch.randn(*shape, device="cuda", dtype=torch.bfloat16)
    dy = torch.randn(*shape, device="cuda", dtype=torch.bfloat16)

    def run(fused):
        monkeypatch.setitem(FUSIONS, "relu2_epilogue", fused)
        mlp.zero_grad()
        xi = x.clone().requires_grad_()
        y = kernels_path.mlp(mlp, xi)
        y.backward(dy)
        return [y, xi.grad, mlp.c_fc.weight.grad.clone(), mlp.c_proj.weight.grad.clone()]

    assert relu2_gemm.usable(x, mlp.c_fc.weight, mlp.c_proj.weight) == (C % 8 == 0)
    with torch.no_grad():  # evaluation and sampling keep the unfused path (no autotuning per new shape)
        assert not relu2_gemm.usable(x, mlp.c_fc.weight, mlp.c_proj.weight)
    calls = []
    monkeypatch.setattr(relu2_gemm, "_launch", lambda *a, f=relu2_gemm._launch: calls.append(a[-1]) or f(*a))
    fused = run(True)
    assert calls == ([False, True] if C % 8 == 0 else [])  # forward's then backward's epilogue GEMM
    unfused = run(False)
    ref32 = copy.deepcopy(mlp).float()
    ref32.zero_grad(set_to_none=True)
    xr = x.float().requires_grad_()
    yr = ref32.c_proj(R.relu2(ref32.c_fc(xr)))
    yr.backward(dy.float())
    ref = [yr, xr.grad, ref32.c_fc.weight.grad, ref32.c_proj.weight.grad]
    for name, a, b, r in zip(["y", "dx", "dW_fc", "dW_proj"], fused, unfused, ref):
        assert rel(a, b) < 1e-2, name
        assert rel(a, r) < 2e-2, name


def test_a_fused_mlp_that_cannot_be_built_warns_once_and_runs_unfused(monkeypatch):
    """Where Triton fails to build the kernels (an old driver or Triton), the MLP warns, switches the fusion
    off for the rest of the run and computes the same thing unfused."""
    torch.manual_seed(3)
    mlp = MLP(ModelConfig(n_embd=32, n_head=1, mlp="relu2", bias=False))
    x = torch.randn(2, 5, 32)
    monkeypatch.setitem(FUSIONS, "relu2_epilogue", True)
    monkeypatch.setattr(relu2_gemm, "usable", lambda *a: FUSIONS["relu2_epilogue"])
    tried = []

    def broken(*a):
        tried.append(1)
        raise RuntimeError("PassManager::run failed")

    monkeypatch.setattr(relu2_gemm, "fc_relu2", broken)  # the forward kernel, as Triton fails to build it
    with pytest.warns(UserWarning, match="ReLU.2 GEMMs failed .RuntimeError: PassManager"):
        y = kernels_path.mlp(mlp, x)
    assert not FUSIONS["relu2_epilogue"] and tried == [1]
    torch.testing.assert_close(y, mlp(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kernels_path.mlp(mlp, x)  # no second attempt, no second warning
    assert tried == [1]


def test_the_fused_mlp_s_gradients_and_a_backward_kernel_that_fails(monkeypatch):
    """Relu2Mlp's wiring on the CPU, its two kernels stood in for by torch: output and gradients equal the
    plain MLP's; then a backward kernel that fails to build warns, switches the fusion off and still returns
    the right gradients (the backward kernel is built at its first use, inside loss.backward())."""
    torch.manual_seed(4)
    mlp = MLP(ModelConfig(n_embd=32, n_head=1, mlp="relu2", bias=False))
    x, dy = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    monkeypatch.setitem(FUSIONS, "relu2_epilogue", True)
    monkeypatch.setattr(relu2_gemm, "usable", lambda *a: FUSIONS["relu2_epilogue"])
    monkeypatch.setattr(relu2_gemm, "fc_relu2", lambda x, w: (x @ w.t(), R.relu2(x @ w.t())))
    monkeypatch.setattr(relu2_gemm, "drelu2", lambda dy, w, pre: (dy @ w) * 2 * pre.clamp_min(0))

    def grads():
        mlp.zero_grad()
        xi = x.clone().requires_grad_()
        y = kernels_path.mlp(mlp, xi)
        y.backward(dy)
        return [y.detach(), xi.grad, mlp.c_fc.weight.grad.clone(), mlp.c_proj.weight.grad.clone()]

    def plain():
        mlp.zero_grad()
        xi = x.clone().requires_grad_()
        y = mlp(xi)
        y.backward(dy)
        return [y.detach(), xi.grad, mlp.c_fc.weight.grad.clone(), mlp.c_proj.weight.grad.clone()]

    want = plain()
    for got, ref in zip(grads(), want):
        torch.testing.assert_close(got, ref)

    def broken(*a):
        raise RuntimeError("out of resource: shared memory")

    monkeypatch.setattr(relu2_gemm, "drelu2", broken)
    with pytest.warns(UserWarning, match="ReLU.2 GEMMs failed .RuntimeError: out of resource"):
        got = grads()
    assert not FUSIONS["relu2_epilogue"]
    for g, ref in zip(got, want):
        torch.testing.assert_close(g, ref)
