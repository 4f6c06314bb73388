"""Fused classifier (kernels/classifier.cu): softmax + cross-entropy + dlogits written over the logits in
place, one block per token, against torch's cross_entropy and its gradient; the padded vocabulary
columns (V..Vp) must come out as 0.

    python dev/kernels/classifier.py
"""

from __future__ import annotations

import common
import torch
import torch.nn.functional as F

from gpt2pipe.ops.cuda import launch


def fused(logits, targets, V: int, threads: int = 1024, write_grad: bool = True):
    """(losses, dlogits of the mean loss): the kernel overwrites its input, so it gets a copy."""
    N, Vp = logits.shape
    work = logits.clone()
    losses = torch.empty(N, device="cuda")
    launch("classifier", "fused_classifier", N, threads, logits=work, losses=losses, targets=targets, V=V, Vp=Vp,
           dscale=1.0 / N, write_grad=int(write_grad))
    return losses, work


def validate(N: int, V: int, Vp: int) -> None:
    torch.manual_seed(0)
    logits = (torch.randn(N, Vp, device="cuda") * 3).bfloat16()
    targets = torch.randint(0, V, (N,), device="cuda")
    leaf = logits.float().requires_grad_()
    want = F.cross_entropy(leaf[:, :V], targets, reduction="none")
    (d_want,) = torch.autograd.grad(want.mean(), leaf)
    for threads in (1024, 256):
        print(f"N={N} V={V} Vp={Vp} threads={threads}")
        losses, dlogits = fused(logits, targets, V, threads)
        common.check("losses", losses, want.detach(), 1e-3)
        common.check("dlogits", dlogits, d_want, 2e-2)
        common.check_equal("padded columns get no gradient", dlogits[:, V:].float(), torch.zeros(N, Vp - V, device="cuda"))
        losses_only, untouched = fused(logits, targets, V, threads, write_grad=False)
        common.check_equal("losses without the gradient", losses_only, losses)
        common.check_equal("write_grad=0 leaves the logits", untouched, logits)


def benchmark(N: int = 8192, V: int = 50257, Vp: int = 50304) -> None:
    logits = torch.randn(N, Vp, **common.BF16)
    targets = torch.randint(0, V, (N,), device="cuda")
    nbytes = 2 * 2 * N * Vp + 2 * 2 * N * Vp  # the copy (timed on both sides) and the kernel's read + write
    rows = [(f"ours, {t} threads", common.time_us(lambda t=t: fused(logits, targets, V, t)), nbytes)
            for t in (1024, 512, 256)]
    leaf = logits.clone().requires_grad_()

    def torch_version():
        loss = F.cross_entropy(leaf[:, :V].float(), targets)
        return torch.autograd.grad(loss, leaf)

    rows.append(("torch cross_entropy + grad", common.time_us(torch_version), nbytes))
    common.print_table(f"softmax + cross-entropy + dlogits, N={N} V={V}", rows)


if __name__ == "__main__":
    common.require_gpu()
    for shape in [(1, 8, 8), (37, 1001, 1008), (5, 13, 16), (256, 50257, 50304)]:
        validate(*shape)
    benchmark()
    common.finish()
