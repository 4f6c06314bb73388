"""The speedrun MLP's ReLU^2 GEMMs (ops/relu2_gemm.py, Triton) against cuBLAS + our relu2 kernels: validated
at odd shapes, then timed at the speedrun's micro-batch (65,536 tokens, C = 768, F = 3072): each epilogue
GEMM against the cuBLAS GEMM + kernel it replaces and against the bare cuBLAS GEMM (the ceiling), and the
whole MLP forward + backward fused and unfused. Prints the tile shape the autotuner picked. (Measured on one
H200, 2026-12-04: docs/speedrun.md.)

    python dev/kernels/relu2_gemm.py
"""

from __future__ import annotations

import common
import torch

from gpt2pipe.config import ModelConfig
from gpt2pipe.model import kernels_path
from gpt2pipe.model.gpt import MLP
from gpt2pipe.ops import FUSIONS, relu2_gemm
from gpt2pipe.ops import arch as A


def validate() -> None:
    torch.manual_seed(0)
    for M, K, N in [(1, 768, 3072), (1000, 104, 296), (77, 40, 200), (333, 3072, 768)]:  # K, N: multiples of 8
        print(f"M={M} K={K} N={N}")
        x = torch.randn(M, K, **common.BF16)
        w = torch.randn(N, K, **common.BF16) / K**0.5
        dy = torch.randn(M, N, **common.BF16)
        wp = torch.randn(N, K, **common.BF16) / N**0.5  # proj weight [C, F] with C = N, F = K
        hp = torch.randn(M, K, **common.BF16)
        pre, act = relu2_gemm.fc_relu2(x, w)
        common.check("fc pre", pre, x @ w.t(), 5e-3)
        common.check_equal("fc act = relu2(pre)", act, A.relu2(pre))
        common.check("drelu2", relu2_gemm.drelu2(dy, wp, hp), (dy @ wp).float() * 2 * hp.float().clamp_min(0), 5e-3)


def tflops(M, N, K, us):
    return f"{2 * M * N * K / (us * 1e-6) / 1e12:.0f} TFLOP/s"


def benchmark(M: int = 65536, C: int = 768, F: int = 3072) -> None:
    torch.manual_seed(0)
    x = torch.randn(M, C, **common.BF16)
    w_fc = torch.randn(F, C, **common.BF16) / C**0.5
    w_proj = torch.randn(C, F, **common.BF16) / F**0.5
    dy = torch.randn(M, C, **common.BF16)
    pre = torch.randn(M, F, **common.BF16)
    act_bytes = 2 * M * F
    with torch.no_grad():
        gemm = common.time_us(lambda: x @ w_fc.t())
        unfused = common.time_us(lambda: A.relu2(x @ w_fc.t()))
        fused = common.time_us(lambda: relu2_gemm.fc_relu2(x, w_fc))
    print(f"\nforward: autotuned {T.gemm_relu2_tma.best_config}")
    common.print_table(f"fc GEMM + ReLU^2, M={M} K={C} N={F} (bytes: the activations written)", [
        ("cuBLAS + relu2 kernel", unfused, 2 * act_bytes), ("Triton TMA, ReLU^2 in the epilogue", fused, 2 * act_bytes),
        ("bare cuBLAS GEMM (no activation)", gemm, act_bytes)])
    print(f"bare cuBLAS {tflops(M, F, C, gemm)}, Triton TMA fused {tflops(M, F, C, fused)}")
    grad = common.time_us(lambda: dy @ w_proj)
    unfused = common.time_us(lambda: A.ReLU2.backward(type("C", (), {"saved_tensors": (pre,)})(), dy @ w_proj))
    fused = common.time_us(lambda: relu2_gemm.drelu2(dy, w_proj, pre))
    print(f"\nbackward: autotuned {T.gemm_relu2_tma.best_config}")
    common.print_table(f"dact GEMM + ReLU^2 backward, M={M} K={C} N={F}", [
        ("cuBLAS + relu2 backward kernel", unfused, 3 * act_bytes), ("Triton TMA, d ReLU^2 in the epilogue", fused, 2 * act_bytes),
        ("bare cuBLAS GEMM", grad, act_bytes)])
    print(f"bare cuBLAS {tflops(M, F, C, grad)}, Triton TMA fused {tflops(M, F, C, fused)}")
    mlp = MLP(ModelConfig(n_embd=C, n_head=12, mlp="relu2", bias=False)).cuda().bfloat16()
    xb = x.view(64, M // 64, C).requires_grad_()

    def step():
        kernels_path.mlp(mlp, xb).backward(dy.view_as(xb))

    rows = []
    for fusedflag in (False, True):
        FUSIONS["relu2_epilogue"] = fusedflag
        rows.append((f"relu2_epilogue {fusedflag}", common.time_us(step, reps=20), 6 * act_bytes))
    FUSIONS["relu2_epilogue"] = True
    common.print_table(f"whole MLP forward + backward, {M} tokens (bytes: ~the 4C-wide tensors' traffic)", rows)


if __name__ == "__main__":
    common.require_gpu()
    if not relu2_gemm.available():
        print("needs Triton")
        raise SystemExit(2)
    from gpt2pipe.ops import relu2_gemm_triton as T

    validate()
    benchmark()
    common.finish()
