"""The optimizer protocol the training loop holds (train/optim.py picks the implementation), and the
weight handling shared by the optimizers whose model every process holds whole.

The optimizers (train/adamw.py, train/fsdp.py, train/muon.py) import this module; the factory imports them.
"""

from __future__ import annotations

from typing import Protocol

import torch

from gpt2pipe.distributed import World


class Optimizer(Protocol):
    def prepare_last_backward(self) -> None:
        """Called before the backward pass of a step's last micro-batch (ZeRO: reduce buckets as they finish)."""

    def global_norm(self) -> torch.Tensor:
        """The pre-clip global gradient norm (0-d device tensor, no host sync); clipping uses it in update()."""

    def update(self, lr: float) -> None:
        """Apply the clipped update with learning rate lr and clear the gradients."""

    def discard(self) -> None:
        """Clear the gradients without updating (a skipped step)."""

    def whole_state(self) -> dict | None:
        """{"t", "master", "m", "v"} on CPU for the whole model on process 0 (None elsewhere). Collective."""

    def load_whole_state(self, state: dict, weights_from_master: bool) -> None:
        """Restore moments and master weights (each process takes its own part); with weights_from_master the
        model's weights are set from the fp32 master weights too (the saved weights had another dtype)."""

    def describe(self) -> str | None: ...

    def model_weights(self) -> dict[str, torch.Tensor] | None:
        """The model's whole state_dict as plain CPU tensors on process 0 (None elsewhere). Collective."""

    def load_model_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Load a whole (unsharded) state_dict into the model; each process takes its own part."""


class PlainWeights:
    """Weights of a model that every process holds whole (not sharded): process 0 copies them out."""

    model: torch.nn.Module
    world: World

    def model_weights(self) -> dict[str, torch.Tensor] | None:
        if not self.world.main:
            return None
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    def load_model_weights(self, weights: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(weights)
