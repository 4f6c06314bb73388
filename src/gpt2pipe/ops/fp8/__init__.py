"""FP8 GEMMs for the MLP, the attention's qkv projection and the LM head's logits (H100 and later), applied
to a model by `convert_to_fp8(model, gemms)` (a module swap; see convert.py).

    casts.py    the fp8 cast kernels and the scaled GEMM
    state.py    Fp8State: amax history, scales, calibration flags (saved with the training state)
    gemms.py    the fp8 MLP GEMMs as an autograd Function, the qkv forward GEMM
    convert.py  the fp8 modules, the converter, and state_of / load_state for the training state

Scaling is per tensor with power-of-two scales (kernels/fp8.cuh); activations (e4m3) and gradients (e4m3,
or e5m2: train.fp8_gradients) use delayed scaling, weights (and the LM head's input) current scaling. Nothing here is imported by
the op modules (ops/layernorm.py, mlp.py, ...) or by the model.
"""

from gpt2pipe.ops.fp8.casts import E4M3, E5M2
from gpt2pipe.ops.fp8.convert import (Fp8Head, Fp8MLP, Fp8QkvLinear, Fp8Scaling, convert_to_fp8, has_fp8_gemms,
                                      is_fp8, load_state, state_of, usable)
from gpt2pipe.ops.fp8.state import Fp8State, Fp8Target, Slot

__all__ = ["E4M3", "E5M2", "Fp8Head", "Fp8MLP", "Fp8QkvLinear", "Fp8Scaling", "Fp8State", "Fp8Target",
           "Slot", "convert_to_fp8", "has_fp8_gemms", "is_fp8", "load_state", "state_of", "usable"]
