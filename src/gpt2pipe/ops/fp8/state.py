"""The fp8 scaling state of a model: per layer and per tensor ("slot"), the amax that sets the next scale.

Delayed scaling: during micro-step k every fp8 cast scales by the amax its slot had during micro-step k-1
(`amax_previous`) and records its own (`amax_current`); `roll()` at the start of a micro-step promotes
current to previous. A direction (forward, backward) runs in bf16 and only measures until it has an amax
("calibration"): `calibrated[direction]`. All of it is saved with the training state (`state_dict`) so a
resumed fp8 run is bit-exact, and `read_only_view()` lets validation forwards use the scales without
advancing them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from gpt2pipe import Gpt2pipeError
from gpt2pipe.ops.fp8 import casts

DIRECTIONS = ("forward", "backward")


class Slot(enum.IntEnum):
    """Which tensor of a layer a scale belongs to."""

    MLP_INPUT = 0  # LayerNorm output feeding the MLP's fc GEMM (e4m3)
    GELU_OUTPUT = 1  # bias+GELU output feeding the proj GEMM (e4m3)
    MLP_OUTPUT_GRAD = 2  # gradient arriving at the MLP's output (e5m2, or e4m3: train.fp8_gradients)
    PRE_GELU_GRAD = 3  # gradient of the fc GEMM's output (likewise)
    QKV_INPUT = 4  # LayerNorm output feeding the attention's qkv GEMM (e4m3)
    FC_WEIGHT = 5
    PROJ_WEIGHT = 6
    QKV_WEIGHT = 7


GRADIENT_SLOTS = (Slot.MLP_OUTPUT_GRAD, Slot.PRE_GELU_GRAD)
GRADIENT_FORMATS = {"e5m2": casts.E5M2, "e4m3": casts.E4M3}  # train.fp8_gradients
# e4m3: per tensor its error in the input-gradient GEMMs is about a third lower than e5m2's at the same speed
# (dev/kernels/fp8_scaling.py), and it passed the 3-seed quality gate over 100M tokens (docs/fp8.md)
DEFAULT_GRADIENTS = "e4m3"


class Fp8State:
    """amax per (layer, slot) on the device: `amax_previous` sets this micro-step's scales, `amax_current`
    collects this micro-step's; `inv_scale` holds each slot's 1/scale for the GEMMs. `gradients`: the fp8
    format of the gradient slots (e4m3's extra mantissa bit, or e5m2's range)."""

    def __init__(self, n_layer: int, device: torch.device | str, gradients: str = DEFAULT_GRADIENTS):
        if gradients not in GRADIENT_FORMATS:
            raise Gpt2pipeError(f"fp8 gradients must be one of {sorted(GRADIENT_FORMATS)}, not {gradients!r}")
        self.n_layer, self.gradients = n_layer, gradients
        self.amax_previous = torch.zeros(n_layer, len(Slot), device=device)
        self.amax_current = torch.zeros(n_layer, len(Slot), device=device)
        # cuBLASLt wants each scale 16-byte aligned: one scale per 4 floats
        self._inv_scale_storage = torch.ones(n_layer, len(Slot), 4, device=device)
        self.calibrated = {d: False for d in DIRECTIONS}  # amax_previous holds amax for this direction
        self.measured = {d: False for d in DIRECTIONS}  # an amax was recorded since the last roll

    @property
    def device(self) -> torch.device:
        return self.amax_previous.device

    @property
    def inv_scale(self) -> torch.Tensor:
        return self._inv_scale_storage[..., 0]

    def roll(self) -> None:
        """Start a micro-step: the last micro-step's amax become the scales (slots it did not touch keep theirs)."""
        torch.where(self.amax_current > 0, self.amax_current, self.amax_previous, out=self.amax_previous)
        self.amax_current.zero_()
        for d in DIRECTIONS:
            self.calibrated[d] |= self.measured[d]
            self.measured[d] = False

    def target(self, layer: int, slot: Slot) -> Fp8Target:
        return Fp8Target(self, layer, slot)

    def read_only_view(self) -> Fp8State:
        """A state that reads these scales but records amax and writes 1/scale into scratch tensors of its
        own and never rolls: forwards through it (validation, evaluation) leave training's state as it was."""
        view = Fp8State.__new__(Fp8State)
        view.n_layer, view.gradients = self.n_layer, self.gradients
        view.amax_previous = self.amax_previous  # read only: nothing but roll() writes it
        view.amax_current = torch.zeros_like(self.amax_current)
        view._inv_scale_storage = torch.ones_like(self._inv_scale_storage)
        view.calibrated = self.calibrated  # follows training's calibration; the view never changes it
        view.measured = {d: False for d in DIRECTIONS}
        return view

    def to(self, device: torch.device) -> Fp8State:
        """This state on `device` (itself when already there)."""
        if self.device == torch.device(device):
            return self
        moved = Fp8State(self.n_layer, device, self.gradients)
        moved.load_state_dict(self.state_dict())
        return moved

    def state_dict(self) -> dict:
        """Tensors on the CPU and ints only: loadable with torch.load(weights_only=True)."""
        return {"n_layer": self.n_layer, "slots": len(Slot),
                "amax_previous": self.amax_previous.detach().cpu().clone(),
                "amax_current": self.amax_current.detach().cpu().clone(),
                "inv_scale": self.inv_scale.detach().cpu().clone(),
                **{f"calibrated_{d}": int(self.calibrated[d]) for d in DIRECTIONS},
                **{f"measured_{d}": int(self.measured[d]) for d in DIRECTIONS}}

    def load_state_dict(self, state: dict) -> None:
        if (state["n_layer"], state["slots"]) != (self.n_layer, len(Slot)):
            raise Gpt2pipeError(f"fp8 state for {state['n_layer']} layers x {state['slots']} slots does not fit "
                                f"a model of {self.n_layer} layers x {len(Slot)} slots")
        self.amax_previous.copy_(state["amax_previous"])
        self.amax_current.copy_(state["amax_current"])
        self.inv_scale.copy_(state["inv_scale"])
        for d in DIRECTIONS:
            self.calibrated[d] = bool(state[f"calibrated_{d}"])
            self.measured[d] = bool(state[f"measured_{d}"])


@dataclass(frozen=True)
class Fp8Target:
    """One (layer, slot) of a state: what a kernel that writes an fp8 copy needs (ops/__init__.py's
    `fp8_target` interface)."""

    state: Fp8State
    layer: int
    slot: Slot

    @property
    def inv_scale(self) -> torch.Tensor:
        return self.state.inv_scale[self.layer, self.slot]

    @property
    def amax_current(self) -> torch.Tensor:
        return self.state.amax_current[self.layer, self.slot]

    @property
    def dtype(self) -> torch.dtype:
        """The fp8 format of this slot's copies: e4m3, or the state's gradient format in a gradient slot."""
        return GRADIENT_FORMATS[self.state.gradients] if self.slot in GRADIENT_SLOTS else casts.E4M3

    @property
    def amax_previous(self) -> torch.Tensor:
        return self.state.amax_previous[self.layer, self.slot]

    def cast(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return casts.cast(x, dtype, self.inv_scale, self.amax_current, self.amax_previous)

    def record_amax(self, x: torch.Tensor) -> None:
        """Calibration: only measure x's amax for the next micro-step."""
        casts.record_amax(x, self.amax_current)

    def weight_copies(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return casts.weight_copies(w, self.inv_scale, self.amax_current)
