"""Which optimizer a run gets, behind one protocol (train/optimizer_protocol.py), so the training loop never
asks which optimizer it holds.

Four implementations: torch's AdamW (one process, the torch path) and our flat AdamW with fp32 master
weights (the kernels path, and ZeRO-1/ZeRO-2 sharding on several processes), both in train/adamw.py; torch's
AdamW on an FSDP2-sharded model (ZeRO-3, train/fsdp.py); and Muon with the flat AdamW for the rest
(train.optimizer muon, train/muon.py). The AdamW ones save the same *whole-model state* — fp32 master weights
and both moments as flat tensors in `ordered_params` order, plus the step count — so a state saved by either
resumes on the other and on any number of processes; Muon's adds its momentum and resumes on any number of
processes too.
"""

from __future__ import annotations

import torch

from gpt2pipe import Gpt2pipeError
from gpt2pipe.config import TrainConfig
from gpt2pipe.distributed import World
from gpt2pipe.train.adamw import ShardedAdamW, TorchAdamW
from gpt2pipe.train.optimizer_protocol import Optimizer


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
