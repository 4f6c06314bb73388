"""Token + position embedding (kernels/encoder.cu): the forward one element per thread against the `_vec`
one (8 channels per thread, 16-byte accesses; C % 8 == 0), and the deterministic backward (wte rows summed
per run of equal tokens in token-sorted order, wpe rows summed over the batch in a fixed order) against
torch's index_add.

    python dev/kernels/encoder.py
"""

from __future__ import annotations

import common
import torch

from gpt2pipe.ops.cuda import launch


def blocks(n: int, threads: int = 256) -> int:
    return max(1, min((n + threads - 1) // threads, 65535 * 8))


def versions(C: int) -> list[str]:
    return ["scalar"] + (["vec"] if C % 8 == 0 else [])


def forward(version: str, idx, wte, wpe):
    B, T = idx.shape
    C = wte.shape[1]
    out = torch.empty(B, T, C, dtype=wte.dtype, device="cuda")
    if version == "vec":
        launch("encoder", "encoder_forward_vec", blocks(B * T * C // 8), 256, out, idx, wte, wpe, B * T, T, C)
    else:
        launch("encoder", "encoder_forward", blocks(B * T * C), 256, out, idx, wte, wpe, B * T, T, C)
    return out


def backward(dout, idx, wte_shape, wpe_shape):
    B, T = idx.shape
    C = wte_shape[1]
    sorted_tokens, order = torch.sort(idx.reshape(-1), stable=True)
    dwte = torch.zeros(wte_shape, **common.BF16)
    launch("encoder", "encoder_backward_wte_sorted", B * T, 256, dwte=dwte, dout=dout, order=order,
           sorted_tokens=sorted_tokens, N=B * T, C=C)
    dwpe = torch.zeros(wpe_shape, **common.BF16)
    launch("encoder", "encoder_backward_wpe", blocks(T * C), 256, dwpe=dwpe, dout=dout, B=B, T=T, C=C)
    return dwte, dwpe


def reference_backward(dout, idx, wte_shape, wpe_shape):
    B, T = idx.shape
    d = dout.float().reshape(B * T, -1)
    dwte = torch.zeros(wte_shape, device="cuda").index_add_(0, idx.reshape(-1), d)
    dwpe = torch.zeros(wpe_shape, device="cuda")
    dwpe[:T] = dout.float().sum(0)
    return dwte, dwpe


def validate(B: int, T: int, C: int, V: int) -> None:
    torch.manual_seed(0)
    idx = torch.randint(0, V, (B, T), device="cuda")
    idx[0, : min(3, T)] = 5  # repeated tokens: runs in the sorted order
    wte, wpe = torch.randn(V, C, **common.BF16), torch.randn(T + 3, C, **common.BF16)
    want = wte.float()[idx] + wpe.float()[:T]
    dout = torch.randn(B, T, C, **common.BF16)
    for version in versions(C):
        print(f"B={B} T={T} C={C} V={V} {version}")
        common.check("encoder fwd", forward(version, idx, wte, wpe), want, 1e-2)
    dwte, dwpe = backward(dout, idx, wte.shape, wpe.shape)
    ref_wte, ref_wpe = reference_backward(dout, idx, wte.shape, wpe.shape)
    common.check("encoder bwd dwte", dwte, ref_wte, 1e-2)
    common.check("encoder bwd dwpe", dwpe, ref_wpe, 1e-2)
    common.check_equal("encoder bwd deterministic", backward(dout, idx, wte.shape, wpe.shape)[0], dwte)


def benchmark(B: int = 64, T: int = 1024, C: int = 768, V: int = 50304) -> None:
    idx = torch.randint(0, 50257, (B, T), device="cuda")
    wte, wpe = torch.randn(V, C, **common.BF16), torch.randn(T, C, **common.BF16)
    N = B * T
    rows = [(v, common.time_us(lambda v=v: forward(v, idx, wte, wpe)), 8 * N + 6 * N * C) for v in versions(C)]
    rows.append(("torch", common.time_us(lambda: wte[idx] + wpe[:T]), 8 * N + 6 * N * C))
    common.print_table(f"encoder forward, B={B} T={T} C={C}", rows)
    dout = torch.randn(B, T, C, **common.BF16)
    nbytes = 2 * N * C + 2 * 2 * (V + T) * C
    rows = [("sorted runs (ours)", common.time_us(lambda: backward(dout, idx, wte.shape, wpe.shape)), nbytes),
            ("torch index_add (fp32)", common.time_us(lambda: reference_backward(dout, idx, wte.shape, wpe.shape)),
             nbytes)]
    common.print_table(f"encoder backward, B={B} T={T} C={C}", rows)


if __name__ == "__main__":
    common.require_gpu()
    for shape in [(3, 37, 100, 1000), (1, 1, 8, 16), (2, 5, 24, 7), (4, 64, 768, 50304)]:
        validate(*shape)
    benchmark()
    common.finish()
