"""The model's operations two ways: our CUDA kernels (through CuPy) and plain-torch references.

`ops: kernels` in the config runs the kernels on a CUDA device; everywhere else the torch references run.
One module per op family (encoder, layernorm, linear, mlp, attention, classifier; arch.py for the LLaMA-style
pieces), each with its torch.autograd.Functions and a public function per op that runs the kernel on CUDA
tensors when kernels are available and the reference from reference.py otherwise.

Kernels that also write an fp8 copy of their output for the next GEMM (LayerNorm forward, bias+GELU
forward and backward) take an `fp8_target`: any object with `inv_scale`, `amax_current`, `amax_previous`
(0-d float32 CUDA tensors: where the kernel writes 1/scale, where it records this call's amax, and the
amax the scale comes from), `dtype` (the fp8 format of the copy: e4m3, or e5m2 for a gradient unless
train.fp8_gradients says e4m3) and `cast(x, dtype)` (a separate cast, for kernels without an fp8 output).
ops/fp8 makes them; the op modules never import it, so there is no import cycle.
"""

from __future__ import annotations

import functools

# The fusions of the GPT-2 kernels path that have an unfused way beside them, on unless switched off here
# (module-wide, so `gpt2pipe bench` can time both in one run: mode kernels-unfused). gelu_epilogue: the MLP's
# bias+GELU inside its GEMMs (mlp.EpilogueMlp; our bias+GELU kernel otherwise); packed_qkv:
# attention.QkvAttention (autograd through split views and SDPA otherwise); relu2_epilogue: the speedrun
# MLP's ReLU^2 inside Triton GEMMs (relu2_gemm.Relu2Mlp; cuBLAS + our relu2 kernel otherwise); bgrad_epilogue:
# the bias gradients from the weight-gradient GEMMs' epilogue (cuBLASLt BGRADB, linear.weight_bias_grad; our
# column-sum kernel otherwise), off until the training loop measures it faster (bench mode kernels-bgrad).
FUSIONS = {"gelu_epilogue": True, "packed_qkv": True, "relu2_epilogue": True, "bgrad_epilogue": False}


@functools.cache
def kernels_available() -> bool:
    """True when a CUDA device, CuPy and every kernel source are there (a broken install says no here,
    rather than failing at the first launch with "kernel source not found")."""
    import torch

    if not torch.cuda.is_available():
        return False
    try:
        import cupy  # noqa: F401  (importable is all this checks)
    except ImportError:
        return False
    from gpt2pipe.ops.cuda import missing_sources

    return not missing_sources()


def use_kernels(*tensors) -> bool:
    """Our kernels for these tensors: all on CUDA, and kernels available."""
    return all(t.is_cuda for t in tensors) and kernels_available()
