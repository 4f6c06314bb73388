"""AdamW over one flat parameter buffer with fp32 master weights (llm.c's optimizer layout), ZeRO-1 sharded.

All parameters become views into one buffer (bf16 on the kernels path) and their gradients views into one
gradient buffer, decayed (2-D) tensors first. With several processes, each owns 1/world of the buffer:
gradients are reduce-scattered (averaged) into its shard, it keeps master weights and moments for that
shard only, updates it, and the updated parameters are all-gathered. The global gradient norm and clip
factor stay on the device (no host sync). On CPU the update runs through reference.adamw_update.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..distributed import World
from . import reference
from .cuda import launch, sm_count
from .functions import _use_kernels


class FlatAdamW:
    def __init__(self, model: torch.nn.Module, lr: float, betas=(0.9, 0.95), eps: float = 1e-8,
                 weight_decay: float = 0.1, grad_clip: float = 1.0, stochastic_rounding: bool = True,
                 seed: int = 0, dtype: torch.dtype = torch.bfloat16, world: World = World()):
        params = ordered_params(model)
        n_decay = sum(p.numel() for p in params if p.dim() >= 2)
        self.n = sum(p.numel() for p in params)
        self.world = world
        shard = -(-self.n // world.size)  # ceil: the buffer is padded to world * shard
        self.lo, self.hi = world.rank * shard, (world.rank + 1) * shard
        device = params[0].device
        full = torch.zeros(shard * world.size, dtype=torch.float32, device=device)
        self.params = torch.zeros(shard * world.size, dtype=dtype, device=device)
        self.grads = torch.zeros(shard * world.size, dtype=dtype, device=device)
        off = 0
        for p in params:
            k = p.numel()
            full[off : off + k].copy_(p.detach().view(-1))
            self.params[off : off + k].copy_(full[off : off + k])
            p.data = self.params[off : off + k].view(p.shape)
            p.grad = self.grads[off : off + k].view(p.shape)
            off += k
        self.master = full[self.lo : self.hi].clone()  # this process's shard only
        self.m = torch.zeros_like(self.master)
        self.v = torch.zeros_like(self.master)
        self.grad_shard = self.grads[self.lo : self.hi] if not world.distributed else torch.empty(
            shard, dtype=dtype, device=device)
        self.n_decay = min(max(n_decay - self.lo, 0), shard)  # decayed elements at the start of this shard
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.grad_clip, self.stochastic, self.seed = grad_clip, stochastic_rounding, seed
        self.t = 0
        self.norm = torch.zeros(2, dtype=torch.float32, device=device)  # [norm, clip factor]
        self.blocks = sm_count() * 2 if device.type == "cuda" else 1
        self.partials = torch.empty(self.blocks, dtype=torch.float32, device=device)
        self.param_groups = [{"lr": lr}]  # what the training loop's lr setter touches
        self.kernels = _use_kernels(self.grads) and dtype == torch.bfloat16  # our kernels read/write bf16

    def zero_grad(self, set_to_none: bool = False) -> None:
        self.grads.zero_()  # never None: the views must stay the .grad of every parameter

    def grad_norm(self) -> torch.Tensor:
        """Average the gradients into this shard (reduce-scatter), then write [norm, clip factor] of the
        global gradient into self.norm on the device and return it."""
        if self.world.distributed:
            dist.reduce_scatter_tensor(self.grad_shard, self.grads)
            self.grad_shard /= self.world.size
            sq = self.grad_shard.float().square().sum()
            dist.all_reduce(sq)
            norm = sq.sqrt()
            scale = torch.clamp(self.grad_clip / (norm + 1e-6), max=1.0) if self.grad_clip > 0 else torch.ones_like(norm)
            self.norm.copy_(torch.stack([norm, scale]))
        elif self.kernels:
            n = self.grads.numel()
            launch("global_norm", "global_norm_partial", self.blocks, 1024, self.partials, self.grads, _i64(n))
            launch("global_norm", "global_norm_finalize", 1, 1024, self.norm, self.partials, self.blocks,
                   float(self.grad_clip))
        else:
            self.norm.copy_(reference.global_norm_scale(self.grads, self.grad_clip))
        return self.norm

    def step(self, lr: float | None = None, norm_ready: bool = False) -> torch.Tensor:
        """Clip and update; returns the pre-clip gradient norm as a device tensor.
        norm_ready: grad_norm() already ran on these gradients (the training loop reads the norm first)."""
        lr = self.param_groups[0]["lr"] if lr is None else lr
        if not norm_ready:
            self.grad_norm()
        self.t += 1
        b1, b2 = self.betas
        mine = self.params[self.lo : self.hi]
        if self.kernels:
            n = mine.numel()
            launch("adamw", "adamw_update", min((n + 255) // 256, self.blocks * 8), 256, mine, self.master,
                   self.m, self.v, self.grad_shard, self.norm, _i64(n), _i64(self.n_decay), _i64(self.lo),
                   float(lr), float(b1), float(b2), float(1 - b1**self.t), float(1 - b2**self.t), float(self.eps),
                   float(self.weight_decay), _u32(self.seed * 1_000_003 + self.t), int(self.stochastic))
        else:
            reference.adamw_update(mine, self.master, self.m, self.v, self.grad_shard, self.norm, self.n_decay,
                                   lr, b1, b2, self.t, self.eps, self.weight_decay)
        if self.world.distributed:
            dist.all_gather_into_tensor(self.params, mine.clone())
        return self.norm[0]

    def _full(self, shard: torch.Tensor) -> torch.Tensor:
        """The whole (unpadded) buffer of a sharded tensor, on every process."""
        if not self.world.distributed:
            return shard[: self.n]
        out = torch.empty(shard.numel() * self.world.size, dtype=shard.dtype, device=shard.device)
        dist.all_gather_into_tensor(out, shard.contiguous())
        return out[: self.n]

    def state_dict(self) -> dict:
        """Whole-model state (gathered from every shard), so a run can resume on any number of processes.
        Collective: every process must call it."""
        return {"t": self.t, "master": self._full(self.master), "m": self._full(self.m), "v": self._full(self.v)}

    def load_state_dict(self, state: dict) -> None:
        self.t = state["t"]
        for name in ("master", "m", "v"):
            full = state[name].to(self.master.device)
            mine = getattr(self, name)
            mine.zero_()
            part = full[self.lo : min(self.hi, self.n)]
            mine[: part.numel()].copy_(part)

    def shard_size(self) -> int:
        return self.master.numel()


def _i64(x: int):
    import numpy as np

    return np.int64(x)


def _u32(x: int):
    import numpy as np

    return np.uint32(x % 2**32)


def ordered_params(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Trainable parameters in the flat buffer's order: decayed (2-D) first, each group in model order —
    the same order as the two parameter groups of the training loop's torch AdamW."""
    params = list(dict.fromkeys(p for p in model.parameters() if p.requires_grad))
    return sorted(params, key=lambda p: p.dim() < 2)


def flat_state_from_torch(state: dict, params: list[torch.Tensor]) -> dict:
    """torch.optim.AdamW's state (one process, fp32 weights) as FlatAdamW's whole-model state."""
    per = state["state"]
    if not per:
        z = torch.zeros(sum(p.numel() for p in params))
        return {"t": 0, "master": torch.cat([p.detach().float().view(-1).cpu() for p in params]), "m": z, "v": z}
    return {
        "t": int(per[0]["step"]),
        "master": torch.cat([p.detach().float().view(-1).cpu() for p in params]),
        "m": torch.cat([per[i]["exp_avg"].float().view(-1).cpu() for i in range(len(params))]),
        "v": torch.cat([per[i]["exp_avg_sq"].float().view(-1).cpu() for i in range(len(params))]),
    }


def torch_state_from_flat(flat: dict, optimizer: torch.optim.Optimizer) -> dict:
    """FlatAdamW's whole-model state as torch.optim.AdamW's (whose weights are the fp32 master weights)."""
    state = optimizer.state_dict()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    off = 0
    for i, p in enumerate(params):
        k = p.numel()
        state["state"][i] = {"step": torch.tensor(float(flat["t"])),
                             "exp_avg": flat["m"][off : off + k].view(p.shape).clone(),
                             "exp_avg_sq": flat["v"][off : off + k].view(p.shape).clone()}
        off += k
    return state
