"""The fused classifier's weight gradient is summed over its token chunks in fp32 (issue 16): closer to an
fp64 reference than the bf16 running sum it replaced, by a margin that grows with the number of chunks."""

import pytest
import torch

from gpt2pipe.ops import classifier
from gpt2pipe.ops.classifier import FusedClassifier

pytest.importorskip("cupy", reason="CuPy is not installed")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def reference_dw(h, w, t, V):
    """d(mean cross-entropy over the real vocabulary)/dW in fp64, from the same bf16 inputs."""
    logits = h.double() @ w.double().t()
    p = torch.softmax(logits[:, :V], dim=-1)
    p[torch.arange(len(t), device=t.device), t] -= 1.0
    dw = torch.zeros(w.shape, dtype=torch.float64, device=w.device)
    dw[:V] = (p / len(t)).t() @ h.double()
    return dw


@pytest.mark.gpu
def test_weight_gradient_sums_its_chunks_in_fp32(monkeypatch):
    monkeypatch.setattr(classifier, "CLASSIFIER_CHUNK", 16)  # 256 chunks: the bf16 running sum is rounded 255 times
    torch.manual_seed(0)
    N, C, V, Vp = 4096, 64, 1000, 1008
    h = torch.randn(N, C, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(Vp, C, device="cuda", dtype=torch.bfloat16) * 0.1
    w[V:] = 0
    t = torch.randint(0, V, (N,), device="cuda")
    ref = reference_dw(h, w, t, V)

    def dw(fp32: bool) -> torch.Tensor:
        monkeypatch.setattr(FusedClassifier, "dw_fp32", fp32)
        weight = w.clone().requires_grad_()
        loss = FusedClassifier.apply(h, weight, t, V, True)
        (g,) = torch.autograd.grad(loss, weight)
        assert g.dtype == torch.bfloat16 and g.shape == w.shape
        assert g[V:].abs().sum() == 0  # padded rows still get no gradient
        return g

    err_fp32, err_bf16 = rel(dw(True), ref), rel(dw(False), ref)
    # fp32: the bf16 logits, dlogits and final rounding remain (~2e-3); bf16: ~2^-9 sqrt(chunks/2) on top
    assert err_fp32 < 6e-3, err_fp32
    assert err_fp32 < err_bf16 / 3, (err_fp32, err_bf16)


@pytest.mark.gpu
def test_one_chunk_gives_the_same_gradient_either_way(monkeypatch):
    """With a single chunk nothing is summed: fp32 and bf16 agree up to the final rounding, so the switch
    changes only the summation."""
    torch.manual_seed(1)
    N, C, V, Vp = 512, 64, 1000, 1008
    h = torch.randn(N, C, device="cuda", dtype=torch.bfloat16)
    w = (torch.randn(Vp, C, device="cuda") * 0.1).to(torch.bfloat16)
    t = torch.randint(0, V, (N,), device="cuda")
    grads = []
    for fp32 in (True, False):
        monkeypatch.setattr(FusedClassifier, "dw_fp32", fp32)
        weight = w.clone().requires_grad_()
        grads.append(torch.autograd.grad(FusedClassifier.apply(h, weight, t, V, True), weight)[0])
    assert rel(grads[0], grads[1]) < 4e-3
