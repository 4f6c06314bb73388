"""GPT-2's causal self-attention from its input to the heads' output on the kernels path (before the output
projection): the packed qkv projection and cuDNN/flash SDPA, with a backward that reads SDPA's gradients
where they lie (QkvAttention)."""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from gpt2pipe.ops import FUSIONS, use_kernels
from gpt2pipe.ops.linear import LinearBias, linear, weight_bias_grad


class QkvAttention(torch.autograd.Function):
    """GPT-2's attention from its input up to the heads' output: qkv = x W^T + b, causal SDPA of its q, k, v
    (strided views of qkv, no copies), out [B, T, C].

    What it saves over autograd of those steps: SDPA's backward (cuDNN) returns dq, dk, dv each laid out
    [B, T, H, D] — a plain [B*T, C] matrix — and autograd then copies them into one packed dqkv for the
    linear's backward (a cat of 3 x B*T*C, ~2% of the 124M step on the H100). Here the linear's backward
    reads them where they are: dW's q, k and v row blocks are three GEMMs, dx = dq Wq + dk Wk + dv Wv
    accumulates in place (beta = 1). `project`, when given, computes qkv instead (the fp8 forward GEMM)."""

    @staticmethod
    def forward(ctx, x, weight, bias, n_head, project=None):
        B, T, C = x.shape
        qkv = project() if project is not None else torch.nn.functional.linear(x, weight, bias)
        D = C // n_head
        with torch.enable_grad():  # SDPA's own autograd, kept for backward
            q, k, v = (t.view(B, T, n_head, D).transpose(1, 2).detach().requires_grad_()
                       for t in qkv.split(C, dim=2))
            y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        ctx.attention = (q, k, v, y)
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return y.detach().transpose(1, 2).reshape(B, T, C)  # a view when SDPA wrote [B, T, H, D] (cuDNN)

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        q, k, v, y = ctx.attention
        ctx.attention = None
        x, weight = ctx.saved_tensors
        B, T, C = x.shape
        dy = dout.reshape(B, T, q.shape[1], q.shape[3]).transpose(1, 2)
        grads = torch.autograd.grad(y, (q, k, v), dy)
        parts = [g.transpose(1, 2).reshape(B * T, C) for g in grads]  # views for cuDNN's layout
        x2 = x.reshape(B * T, C)
        w_parts = weight.split(C)
        dw = torch.empty_like(weight)
        db = weight.new_empty(3 * C) if ctx.has_bias else None
        for i, (g, dw_part) in enumerate(zip(parts, dw.split(C))):
            if db is None:
                torch.mm(g.t(), x2, out=dw_part)
            else:  # q, k and v's blocks of dW and db, each written in place
                weight_bias_grad(g, x2, dw_part, db[i * C:(i + 1) * C])
        dx = torch.mm(parts[0], w_parts[0])
        for g, w in zip(parts[1:], w_parts[1:]):
            dx.addmm_(g, w)
        return dx.view(B, T, C), dw, db, None, None


def qkv_attention(x, weight, bias, n_head: int, project=None, packed: bool = True):
    """Causal self-attention of GPT-2 (n_head q, k and v heads, packed qkv projection) from x to the heads'
    output [B, T, C], before the output projection: QkvAttention on the kernels path when training, else
    autograd through the split views and SDPA. packed=False keeps QkvAttention out: activation checkpointing
    (train.recompute) must not see it, because its backward runs SDPA's autograd as a graph of its own, which
    the checkpoint would recompute again and whose tensors it could not free."""
    if packed and FUSIONS["packed_qkv"] and torch.is_grad_enabled() and use_kernels(x):
        return QkvAttention.apply(x.contiguous(), weight, bias, n_head, project)
    B, T, C = x.shape
    qkv = linear(x, weight, bias) if project is None else LinearBias.apply(x, weight, bias, project)
    q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in qkv.split(C, dim=2))
    y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    return y.transpose(1, 2).reshape(B, T, C)
