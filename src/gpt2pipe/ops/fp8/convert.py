"""fp8 applied to a model by swapping modules (torchtitan's float8 converter, nanochat's module swap).

`convert_to_fp8(model, gemms)` replaces every block's MLP with `Fp8MLP` ("mlp"), its attention's qkv linear
with `Fp8QkvLinear` ("qkv") and the LM head with `Fp8Head` ("head"). They keep the original parameters under
the same names (a tied head stays tied), so the state dict, checkpoints, exports and the optimizer see the
same model; the model file itself knows nothing of fp8. On the torch path they compute exactly what the
modules they replace did; on the kernels path (`forward_kernels`, `projection`) they run the fp8 GEMMs of
gemms.py where the GPU and the shapes allow, and bf16 kernels elsewhere.

The model's kernels forward (model/kernels_path.py) asks each module that follows a LayerNorm for an
`fp8_input_target(x)`: the (state, layer, slot) into which that LayerNorm writes an e4m3 copy of its output,
so the GEMM reads fp8 without a separate cast. One `Fp8Scaling` per model holds the scaling state; a forward
pre-hook rolls it at the start of each training forward. Forwards in eval mode or under torch.no_grad()
(validation, HellaSwag, sampling) read the scales through a read-only view and never change them.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt2pipe import Gpt2pipeError
from gpt2pipe.ops import kernels_available
from gpt2pipe.ops import mlp as bf16_mlp  # the kernels path where fp8 cannot run
from gpt2pipe.ops.cuda import aligned
from gpt2pipe.ops.fp8.casts import E4M3, cast_current, scaled_mm
from gpt2pipe.ops.fp8.gemms import Fp8MlpFunction, qkv_forward
from gpt2pipe.ops.fp8.state import DEFAULT_GRADIENTS, Fp8State, Fp8Target, Slot

SCALING_ATTRIBUTE = "fp8_scaling"  # where a converted model keeps its Fp8Scaling


def has_fp8_gemms(device: torch.device | None = None) -> bool:
    """The CUDA device has fp8 tensor cores (sm_89: Ada, Hopper and newer)."""
    return torch.cuda.get_device_capability(device) >= (8, 9)


def usable(x: torch.Tensor, *params: torch.Tensor) -> bool:
    """fp8 GEMMs need an sm_89+ GPU with our kernels, bf16 tensors and dimensions that are multiples of 16;
    the fp8 kernels are the vectorised ones, so the parameters must also be 16-byte aligned."""
    if not (x.is_cuda and kernels_available() and has_fp8_gemms(x.device)):
        return False
    dims = (x.shape[-1], x.numel() // x.shape[-1], *(p.shape[0] for p in params))
    return (x.dtype == torch.bfloat16 and all(p.dtype == torch.bfloat16 for p in params)
            and all(d % 16 == 0 for d in dims) and aligned(*params))


class Fp8Scaling:
    """The scaling state of one converted model, shared by its fp8 modules; made on the device of the first
    forward (or of the parameters, when a saved state is loaded first)."""

    def __init__(self, n_layer: int, gradients: str = DEFAULT_GRADIENTS):
        self.n_layer, self.gradients = n_layer, gradients
        self.state: Fp8State | None = None
        self._read_only: Fp8State | None = None

    def on(self, device: torch.device) -> Fp8State:
        if self.state is None:
            self.state = Fp8State(self.n_layer, device, self.gradients)
        elif self.state.device != torch.device(device):
            self.state, self._read_only = self.state.to(device), None
        return self.state

    def for_forward(self, device: torch.device, training: bool) -> Fp8State:
        """The live state for a training forward (module in training mode, gradients on); otherwise a
        read-only view of it."""
        state = self.on(device)
        if training and torch.is_grad_enabled():
            return state
        if self._read_only is None or self._read_only.amax_previous is not state.amax_previous:
            self._read_only = state.read_only_view()
        return self._read_only

    def begin_forward(self, model: nn.Module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook: a training forward is a new micro-step, so the last one's amax become the scales."""
        idx = args[0] if args else kwargs.get("idx")
        if model.training and torch.is_grad_enabled() and isinstance(idx, torch.Tensor) and idx.is_cuda:
            self.on(idx.device).roll()

    def state_dict(self) -> dict:
        return (self.state or Fp8State(self.n_layer, "cpu", self.gradients)).state_dict()

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.on(device).load_state_dict(state)


class Fp8MLP(nn.Module):
    """GPT-2's MLP (c_fc, GELU, c_proj) with its GEMMs in fp8 on the kernels path."""

    def __init__(self, mlp: nn.Module, scaling: Fp8Scaling, layer: int):
        super().__init__()
        self.c_fc, self.c_proj = mlp.c_fc, mlp.c_proj
        self.scaling, self.layer = scaling, layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))

    def _usable(self, x: torch.Tensor) -> bool:
        return usable(x, self.c_fc.weight, self.c_proj.weight, self.c_fc.bias, self.c_proj.bias)

    def fp8_input_target(self, x: torch.Tensor) -> Fp8Target | None:
        if not self._usable(x):
            return None
        return self.scaling.for_forward(x.device, self.training).target(self.layer, Slot.MLP_INPUT)

    def forward_kernels(self, x: torch.Tensor, x_fp8: torch.Tensor | None = None) -> torch.Tensor:
        fc, proj = self.c_fc, self.c_proj
        if not self._usable(x):
            return bf16_mlp.mlp(x, fc.weight, fc.bias, proj.weight, proj.bias)
        state = self.scaling.for_forward(x.device, self.training)
        return Fp8MlpFunction.apply(x, x_fp8, fc.weight, fc.bias, proj.weight, proj.bias, state, self.layer)


class _SameLinear(nn.Linear):
    """An nn.Linear that holds another one's parameters (the same Parameter objects, so a tied weight stays
    tied): the base of the swapped linears, which differ only on the kernels path."""

    def __init__(self, linear: nn.Linear):
        nn.Module.__init__(self)  # not nn.Linear's: that would allocate new parameters
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_parameter("weight", linear.weight)
        self.register_parameter("bias", linear.bias)


class Fp8QkvLinear(_SameLinear):
    """The attention's qkv projection with its forward GEMM in fp8 on the kernels path (from the e4m3
    copy its LayerNorm wrote); the same nn.Linear, with the same parameters, everywhere else."""

    def __init__(self, linear: nn.Linear, scaling: Fp8Scaling, layer: int):
        super().__init__(linear)
        self.scaling, self.layer = scaling, layer

    def _usable(self, x: torch.Tensor) -> bool:
        return self.bias is not None and usable(x, self.weight, self.bias)

    def fp8_input_target(self, x: torch.Tensor) -> Fp8Target | None:
        if not self._usable(x):
            return None
        return self.scaling.for_forward(x.device, self.training).target(self.layer, Slot.QKV_INPUT)

    def projection(self, x: torch.Tensor, x_fp8: torch.Tensor | None = None):
        """The forward GEMM in fp8 from x_fp8 as a zero-argument callable (for the model's attention, which
        does the bf16 backward), or None where it stays bf16 (no e4m3 copy, or shapes fp8 cannot take)."""
        if x_fp8 is None or not self._usable(x):
            return None
        state = self.scaling.for_forward(x.device, self.training)
        return functools.partial(qkv_forward, x, x_fp8, self.weight, self.bias, state, self.layer)


class Fp8Head(_SameLinear):
    """The LM head (bias-free, possibly tied to wte) with its logits GEMM in fp8 on the kernels path: e4m3
    copies of the hidden states and of W, each scaled by its own amax of this micro-step (current scaling,
    so nothing is carried between steps or saved). The classifier's input- and weight-gradient GEMMs stay
    bf16. The same nn.Linear everywhere else."""

    def __init__(self, linear: nn.Linear):
        super().__init__(linear)
        self._scales: dict[torch.device, torch.Tensor] = {}

    def projection(self, h: torch.Tensor, _x_fp8=None):
        """logits_of(start, end): the logits of rows start:end of h (flattened) from the fp8 copies, for
        ops.classifier.fused_classifier; None where fp8 cannot run (then the classifier's bf16 GEMM does)."""
        if not (self.training and torch.is_grad_enabled() and usable(h, self.weight)):
            return None
        if h.device not in self._scales:  # [inv_scale x 2 (16-byte aligned each), amax x 2, scratch x 2]
            self._scales[h.device] = torch.ones(4, 4, device=h.device)
        s = self._scales[h.device]
        h2 = h.reshape(-1, h.shape[-1])
        h8 = cast_current(h2, E4M3, s[0, 0], s[2, 0], s[3, 0])
        w8 = cast_current(self.weight, E4M3, s[1, 0], s[2, 1], s[3, 1])
        return lambda start, end: scaled_mm(h8[start:end], w8.t(), s[0, 0], s[1, 0])


def convert_to_fp8(model: nn.Module, gemms=("mlp",), gradients: str = DEFAULT_GRADIENTS) -> nn.Module:
    """Swap, in place, each block's `mlp` for Fp8MLP ("mlp" in gemms), `attn.c_attn` for Fp8QkvLinear
    ("qkv" in gemms) (blocks are `model.transformer.h`, nanoGPT's layout), and `lm_head` for Fp8Head ("head"
    in gemms); parameters and their names are unchanged, and the scaling state has the same slots whichever
    are swapped. `gradients`: the MLP's input-gradient GEMMs read their gradients in e5m2 or e4m3
    (train.fp8_gradients). Idempotent. Returns the model. The defaults are train.fp8_gemms' (the MLP only)
    and train.fp8_gradients'."""
    if getattr(model, SCALING_ATTRIBUTE, None) is not None:
        return model
    blocks = list(model.transformer.h)
    scaling = Fp8Scaling(len(blocks), gradients)
    for layer, block in enumerate(blocks):
        if "mlp" in gemms:
            block.mlp = Fp8MLP(block.mlp, scaling, layer)
        if "qkv" in gemms:
            block.attn.c_attn = Fp8QkvLinear(block.attn.c_attn, scaling, layer)
    if "head" in gemms:
        model.lm_head = Fp8Head(model.lm_head)
    setattr(model, SCALING_ATTRIBUTE, scaling)
    model.register_forward_pre_hook(scaling.begin_forward, with_kwargs=True)
    return model


def is_fp8(model: nn.Module) -> bool:
    return getattr(model, SCALING_ATTRIBUTE, None) is not None


def state_of(model: nn.Module) -> dict | None:
    """The model's fp8 scaling state for the training state (CPU tensors and ints; torch.load with
    weights_only=True reads it back), or None when the model is not converted to fp8."""
    scaling = getattr(model, SCALING_ATTRIBUTE, None)
    return None if scaling is None else scaling.state_dict()


def load_state(model: nn.Module, state: dict | None) -> None:
    """Restore what state_of saved. None (nothing saved) leaves the model to calibrate afresh."""
    if state is None:
        return
    scaling = getattr(model, SCALING_ATTRIBUTE, None)
    if scaling is None:
        raise Gpt2pipeError("the saved training state holds fp8 scaling state, but the model is not "
                            "converted to fp8 (train.fp8 is off?)")
    scaling.load_state_dict(state, next(model.parameters()).device)
