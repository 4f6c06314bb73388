"""The Triton kernels of ops/relu2_gemm.py (imported only where Triton is, so the package imports without it).

C = A @ B^T for A [M, K] and B [N, K] (bf16, row-major), then an epilogue on the bf16-rounded product h:
forward (BACKWARD=False) writes C = h and D = relu(h)^2; backward reads D (the pre-activation) and writes
C = h * 2 relu(D). Persistent (one program per SM walking the tiles), operands read through TMA descriptors
(sm_90+; row strides a multiple of 16 bytes), the epilogue in two half-width sub-tiles so more shared memory
goes to the pipeline's stages. A first version with plain pointer loads reached 325-385 TFLOP/s at the
speedrun's shapes (cuBLAS 650-690, this one 390-430) and made the training step slower: not kept
(docs/speedrun.md)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor


@triton.jit
def _tile(tile, in_group, num_m, GROUP_M: tl.constexpr):
    """Grouped order: neighbouring tiles share A's rows in L2."""
    first_m = (tile // in_group) * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    return first_m + (tile % in_group) % size_m, (tile % in_group) // size_m


@triton.jit
def _epilogue(acc, c_desc, d_desc, om, on, BACKWARD: tl.constexpr):
    h = acc.to(tl.bfloat16).to(tl.float32)  # what the unfused GEMM would hand the activation
    if BACKWARD:
        pre = d_desc.load([om, on]).to(tl.float32)
        c_desc.store([om, on], (h * 2.0 * tl.maximum(pre, 0.0)).to(tl.bfloat16))
    else:
        r = tl.maximum(h, 0.0)
        c_desc.store([om, on], h.to(tl.bfloat16))
        d_desc.store([om, on], (r * r).to(tl.bfloat16))


def _set_blocks(nargs):
    bm, bn, bk = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["BLOCK_K"]
    nargs["a_desc"].block_shape = [bm, bk]
    nargs["b_desc"].block_shape = [bn, bk]
    nargs["c_desc"].block_shape = [bm, bn // 2]
    nargs["d_desc"].block_shape = [bm, bn // 2]


@triton.autotune(configs=[triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": 64, "GROUP_M": 8}, num_stages=s,
                                        num_warps=w, pre_hook=_set_blocks)
                          for m, n, s, w in [(128, 256, 3, 8), (128, 256, 4, 8), (128, 128, 4, 8), (128, 128, 5, 4)]],
                 key=["M", "N", "K", "BACKWARD"])
@triton.jit
def gemm_relu2_tma(a_desc, b_desc, c_desc, d_desc, M, N, K, BACKWARD: tl.constexpr, NUM_SMS: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    start = tl.program_id(0)
    num_m, num_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    in_group = GROUP_M * num_n
    tile_c = start - NUM_SMS  # the epilogue's own counter (lets the compiler overlap it with the next tile)
    for tile in tl.range(start, num_m * num_n, NUM_SMS, flatten=True):
        pm, pn = _tile(tile, in_group, num_m, GROUP_M)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for ki in range(k_tiles):
            a = a_desc.load([pm * BLOCK_M, ki * BLOCK_K])
            b = b_desc.load([pn * BLOCK_N, ki * BLOCK_K])
            acc = tl.dot(a, b.T, acc)
        tile_c += NUM_SMS
        pm, pn = _tile(tile_c, in_group, num_m, GROUP_M)
        halves = tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1))
        h0, h1 = tl.split(halves)
        _epilogue(h0, c_desc, d_desc, pm * BLOCK_M, pn * BLOCK_N, BACKWARD)
        _epilogue(h1, c_desc, d_desc, pm * BLOCK_M, pn * BLOCK_N + BLOCK_N // 2, BACKWARD)


def tma_ok(*tensors: torch.Tensor) -> bool:
    """What TMA takes: 2-D bf16 row-major tensors with a 16-byte multiple row stride and 16-byte aligned bases."""
    return all(t.dim() == 2 and t.stride(1) == 1 and t.stride(0) % 8 == 0 and t.data_ptr() % 16 == 0
               for t in tensors)


def launch(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor, backward: bool) -> None:
    """C, D [M, N] from A [M, K] @ B [N, K]^T and the epilogue (contiguous bf16, tma_ok)."""
    (M, K), N = a.shape, b.shape[0]
    sms = torch.cuda.get_device_properties(a.device).multi_processor_count
    descs = [TensorDescriptor(t, list(t.shape), list(t.stride()), [1, 1]) for t in (a, b, c, d)]  # blocks: _set_blocks
    gemm_relu2_tma[lambda meta: (min(sms, triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"])),)](
        *descs, M, N, K, BACKWARD=backward, NUM_SMS=sms)
