"""One optimizer protocol for the training loop, so the loop never asks which optimizer it holds.

Four implementations: torch's AdamW (one process, the torch path), our flat AdamW with fp32 master weights
(the kernels path, and ZeRO-1/ZeRO-2 sharding on several processes), torch's AdamW on an FSDP2-sharded
model (ZeRO-3, train/fsdp.py) and Muon with the flat AdamW for the rest (train.optimizer muon, train/muon.py).
The AdamW ones save the same *whole-model state* — fp32 master weights and both moments as flat tensors in
`ordered_params` order, plus the step count — so a state saved by either resumes on the other and on any
number of processes; Muon's adds its momentum and resumes on any number of processes too.
"""

from __future__ import annotations

from typing import Protocol

import torch

from gpt2pipe import Gpt2pipeError
from gpt2pipe.config import TrainConfig
from gpt2pipe.distributed import World
from gpt2pipe.ops.flat_adamw import FlatAdamW, ordered_params


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


class _PlainWeights:
    """Weights of a model that every process holds whole (not sharded): process 0 copies them out."""

    model: torch.nn.Module
    world: World

    def model_weights(self) -> dict[str, torch.Tensor] | None:
        if not self.world.main:
            return None
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    def load_model_weights(self, weights: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(weights)


class TorchAdamW(_PlainWeights):
    """torch.optim.AdamW (fused on CUDA) with decay on 2-D weights only, behind the protocol."""

    def __init__(self, model: torch.nn.Module, t: TrainConfig, device: torch.device, world: World = World()):
        self.model, self.world = model, world
        self.params = ordered_params(model)  # (sharded DTensors under ZeRO-3: train/fsdp.py)
        decay = [p for p in self.params if p.dim() >= 2]
        no_decay = [p for p in self.params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        self.inner = torch.optim.AdamW(groups, lr=t.learning_rate, betas=(t.beta1, t.beta2), eps=t.eps,
                                       fused=device.type == "cuda")
        self.grad_clip = t.grad_clip

    @property
    def param_groups(self) -> list[dict]:
        return self.inner.param_groups

    def prepare_last_backward(self) -> None:
        pass

    def global_norm(self) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip if self.grad_clip > 0 else float("inf"))

    def update(self, lr: float) -> None:
        for g in self.inner.param_groups:
            g["lr"] = lr
        self.inner.step()
        self.discard()

    def discard(self) -> None:
        self.inner.zero_grad(set_to_none=True)

    def whole_state(self) -> dict:
        per = self.inner.state_dict()["state"]
        flat = lambda ts: torch.cat([x.detach().float().reshape(-1).cpu() for x in ts])  # noqa: E731
        master = flat(self.params)
        if not per:  # no step taken yet
            return {"t": 0, "master": master, "m": torch.zeros_like(master), "v": torch.zeros_like(master)}
        n = len(self.params)
        return {"t": int(per[0]["step"]), "master": master,
                "m": flat(per[i]["exp_avg"] for i in range(n)), "v": flat(per[i]["exp_avg_sq"] for i in range(n))}

    def load_whole_state(self, state: dict, weights_from_master: bool) -> None:
        # the torch path's weights *are* its master weights: always take them from the fp32 copy
        sd = self.inner.state_dict()
        off = 0
        for i, p in enumerate(self.params):
            k = p.numel()
            with torch.no_grad():
                p.copy_(state["master"][off : off + k].view(p.shape))
            if state["t"] > 0:
                sd["state"][i] = {"step": torch.tensor(float(state["t"])),
                                  "exp_avg": state["m"][off : off + k].view(p.shape).clone(),
                                  "exp_avg_sq": state["v"][off : off + k].view(p.shape).clone()}
            off += k
        self.inner.load_state_dict(sd)

    def describe(self) -> None:
        return None


class ShardedAdamW(_PlainWeights, FlatAdamW):
    """Our flat AdamW (ops/flat_adamw.py) behind the protocol: bf16 weights with fp32 master copies on the
    kernels path, fp32 weights on the torch path with several processes; ZeRO-1 (optimizer state) or ZeRO-2
    (optimizer state and gradients) sharded across processes."""

    def __init__(self, model: torch.nn.Module, **kw):
        FlatAdamW.__init__(self, model, **kw)
        self.model = model

    def prepare_last_backward(self) -> None:
        self.overlap_next_backward()

    def global_norm(self) -> torch.Tensor:
        return self.grad_norm()[0].clone()

    def update(self, lr: float) -> None:
        self.step(lr, norm_ready=True)
        self.zero_grad()

    def discard(self) -> None:
        self.zero_grad()

    def whole_state(self) -> dict | None:
        return self.gathered_state()

    def load_whole_state(self, state: dict, weights_from_master: bool) -> None:
        self.load_state_dict(state)
        if weights_from_master:
            self.weights_from_master()

    def describe(self) -> str | None:
        if not self.world.distributed:
            return None
        stage, what = ("ZeRO-2", "optimizer state and gradients") if self.sharded_grads else ("ZeRO-1", "optimizer state")
        return (f"{stage}: {self.world.size} processes, rank {self.world.rank} holds {what} for "
                f"{self.shard_size():,} of {self.n:,} parameters")


def make_optimizer(model: torch.nn.Module, t: TrainConfig, device: torch.device) -> TorchAdamW:
    return TorchAdamW(model, t, device)


def make_flat_optimizer(model: torch.nn.Module, t: TrainConfig, world: World = World(),
                        dtype: torch.dtype = torch.bfloat16) -> ShardedAdamW:
    """With bf16 (the kernels path) this turns the model's weights bf16."""
    return ShardedAdamW(model, lr=t.learning_rate, betas=(t.beta1, t.beta2), eps=t.eps,
                        weight_decay=t.weight_decay, grad_clip=t.grad_clip, stochastic_rounding=t.stochastic_rounding,
                        seed=t.seed, dtype=dtype, world=world, zero=min(t.zero, 2))


def build_optimizer(model: torch.nn.Module, t: TrainConfig, world: World, device: torch.device,
                    kernels: bool) -> Optimizer:
    """ZeRO-3 (torch/compile path, several processes) shards the model itself through FSDP2; otherwise the
    kernels path always uses the flat optimizer, the torch path too when ZeRO-1/2 needs its layout. On one
    process there is nothing to shard: every stage is the same plain optimizer. train.optimizer muon:
    Muon for the blocks' matrices and the flat AdamW for the rest (train/muon.py), on every path."""
    if t.optimizer == "muon":
        check_optimizer(t, world)
        from gpt2pipe.train.muon import MuonAdamW

        return MuonAdamW(model, t, world, dtype=torch.bfloat16 if kernels else torch.float32,
                         stochastic_rounding=t.stochastic_rounding)
    if t.zero == 3 and world.distributed and not kernels:
        from gpt2pipe.train.fsdp import FsdpAdamW  # FSDP2 imports only where it is used

        return FsdpAdamW(model, t, world, device)
    if kernels:
        return make_flat_optimizer(model, t, world)
    if world.distributed:
        return make_flat_optimizer(model, t, world, dtype=torch.float32)
    return make_optimizer(model, t, device)


def check_optimizer(t: TrainConfig, world: World) -> None:
    """Refuse, before any model exists, what the optimizer cannot do."""
    if t.optimizer == "muon" and t.zero == 3 and world.distributed:
        raise Gpt2pipeError("train.optimizer muon shards its matrices ZeRO-1 style and does not run on an FSDP2 "
                            "model: use train.zero 1 or 2")


def optimizer_step(opt: Optimizer, lr: float) -> torch.Tensor:
    """One whole update (global norm, clip, AdamW, clear gradients); returns the pre-clip norm."""
    norm = opt.global_norm()
    opt.update(lr)
    return norm
