"""The LM head's loss without its logits: mean cross-entropy of h @ W.T computed chunk by chunk, each chunk's
logits turned into its gradient in place by kernels/classifier.cu."""

from __future__ import annotations

import torch

from gpt2pipe.ops import reference, use_kernels
from gpt2pipe.ops.cuda import launch

# tokens per logits chunk (16384 x 50304 bf16 = 1.6 GB): bounds the classifier's memory at any micro-batch.
# On the H100, 16384, 32768 and 65536 gave the same step time (963.8 / 960.5 / 963.5 ms), so the smallest.
CLASSIFIER_CHUNK = 16384


class FusedClassifier(torch.autograd.Function):
    """Mean cross-entropy of h @ W.T over the real vocabulary; the gradients are computed in the forward
    pass, chunk by chunk (the logits of a chunk become its dlogits in place), so the full logits never exist.

    The weight gradient is a sum of one GEMM per chunk. It is summed in fp32 and cast to the weight's dtype
    once, in backward: summed in bf16 (dw_fp32 = False, what this did before), every chunk's addmm rounded
    the running sum again, an error that grows with the number of chunks (tests/test_classifier_fp32.py)."""

    dw_fp32 = True  # class-wide, so `gpt2pipe bench` can time both ways in one run (mode kernels-dw-bf16)
    _fp32_out: bool | None = None  # whether this torch has mm with an fp32 result for bf16 inputs

    @staticmethod
    def _mm_fp32(a, b):
        """a @ b in fp32 for bf16 a, b: cuBLAS accumulates in fp32 and, through aten's mm.dtype (torch 2.8+),
        writes the fp32 result unrounded. Older torch: the product rounded to bf16 once, then widened (the
        sum over chunks still stays fp32)."""
        if FusedClassifier._fp32_out is None:
            try:
                torch.ops.aten.mm.dtype(a[:8, :8], b[:8, :8], torch.float32)
                FusedClassifier._fp32_out = True
            except (AttributeError, RuntimeError, NotImplementedError):
                FusedClassifier._fp32_out = False
        if FusedClassifier._fp32_out:
            return torch.ops.aten.mm.dtype(a, b, torch.float32)
        return (a @ b).float()

    @staticmethod
    def forward(ctx, h, weight, targets, vocab_size, grad, logits_of=None):
        C = h.shape[-1]
        h2 = h.reshape(-1, C)
        t = targets.reshape(-1).contiguous()
        N, Vp = h2.shape[0], weight.shape[0]
        losses = torch.empty(N, dtype=torch.float32, device=h.device)
        dh = torch.empty_like(h2) if grad else None
        dw = None
        fp32 = FusedClassifier.dw_fp32
        for s in range(0, N, CLASSIFIER_CHUNK):
            e = min(N, s + CLASSIFIER_CHUNK)
            logits = h2[s:e] @ weight.t() if logits_of is None else logits_of(s, e)
            launch("classifier", "fused_classifier", e - s, 1024, logits, losses[s:e], t[s:e], vocab_size, Vp,
                   1.0 / N, int(grad))
            if grad:
                torch.mm(logits, weight, out=dh[s:e])
                if fp32:  # the first chunk's product is the sum so far: no add, no zero fill
                    part = FusedClassifier._mm_fp32(logits.t(), h2[s:e])
                    dw = part if dw is None else dw.add_(part)
                else:
                    dw = logits.t() @ h2[s:e] if dw is None else dw.addmm_(logits.t(), h2[s:e])
        ctx.grads = (dh.view_as(h) if grad else None, dw)
        ctx.weight_dtype = weight.dtype
        return losses.mean()

    @staticmethod
    def backward(ctx, dloss):
        dh, dw = ctx.grads
        ctx.grads = None
        # scaled while still fp32, then rounded once to the weight's dtype
        return dh * dloss.to(dh.dtype), (dw * dloss.to(dw.dtype)).to(ctx.weight_dtype), None, None, None, None


def fused_classifier(h, weight, targets, vocab_size: int, logits_of=None):
    """Mean cross-entropy of h @ W.T over the real vocabulary. logits_of(start, end), when given, computes
    the logits of rows start:end instead (the fp8 head); kernels path only."""
    if use_kernels(h) and weight.shape[0] % 8 == 0:
        grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
        return FusedClassifier.apply(h, weight, targets, vocab_size, grad, logits_of)
    return reference.classifier(h, weight, targets, vocab_size)
