"""GPT-2's embedding (token + learned position) through kernels/encoder.cu: forward a gather and add,
backward the token gradient summed per token in position order (deterministic) and the position gradient."""

from __future__ import annotations

import torch

from gpt2pipe.ops import reference, use_kernels
from gpt2pipe.ops.cuda import aligned, blocks, launch


class Encoder(torch.autograd.Function):
    @staticmethod
    def forward(ctx, idx, wte, wpe):
        idx = idx.contiguous()
        B, T = idx.shape
        C = wte.shape[1]
        out = torch.empty(B, T, C, dtype=wte.dtype, device=wte.device)
        if C % 8 == 0 and aligned(wte, wpe):
            launch("encoder", "encoder_forward_vec", blocks(B * T * C // 8), 256, out, idx, wte, wpe, B * T, T, C)
        else:
            launch("encoder", "encoder_forward", blocks(B * T * C), 256, out, idx, wte, wpe, B * T, T, C)
        ctx.save_for_backward(idx)
        ctx.shapes = (wte.shape, wpe.shape)
        return out

    @staticmethod
    def backward(ctx, dout):
        (idx,) = ctx.saved_tensors
        dout = dout.contiguous()
        B, T = idx.shape
        wte_shape, wpe_shape = ctx.shapes
        C = wte_shape[1]
        # group positions by token (stable sort): each token's rows are summed by one block, in order
        sorted_tok, order = torch.sort(idx.view(-1), stable=True)
        dwte = torch.zeros(wte_shape, dtype=dout.dtype, device=dout.device)
        launch("encoder", "encoder_backward_wte_sorted", B * T, 256, dwte, dout, order, sorted_tok, B * T, C)
        dwpe = torch.zeros(wpe_shape, dtype=dout.dtype, device=dout.device)
        launch("encoder", "encoder_backward_wpe", blocks(T * C), 256, dwpe, dout, B, T, C)
        return None, dwte, dwpe


def encoder(idx, wte, wpe):
    return Encoder.apply(idx, wte, wpe) if use_kernels(wte) else reference.encoder(idx, wte, wpe)
