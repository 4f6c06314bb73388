"""AdamW over one flat bf16 parameter buffer with fp32 master weights (llm.c's optimizer layout).

All parameters become views into one bf16 buffer and their gradients views into one bf16 gradient
buffer, decayed (2-D) tensors first: one kernel computes the global gradient norm and clip factor on the
device, one kernel updates everything. No host synchronisation per step; the norm stays on the device.
On CPU the same update runs through reference.adamw_update.
"""

from __future__ import annotations

import torch

from . import reference
from .cuda import launch, sm_count
from .functions import _use_kernels


class FlatAdamW:
    def __init__(self, model: torch.nn.Module, lr: float, betas=(0.9, 0.95), eps: float = 1e-8,
                 weight_decay: float = 0.1, grad_clip: float = 1.0, stochastic_rounding: bool = True,
                 seed: int = 0, dtype: torch.dtype = torch.bfloat16):
        params = list(dict.fromkeys(p for p in model.parameters() if p.requires_grad))  # tied once
        params.sort(key=lambda p: p.dim() < 2)  # stable: decayed 2-D weights first
        self.n_decay = sum(p.numel() for p in params if p.dim() >= 2)
        n = sum(p.numel() for p in params)
        device = params[0].device
        self.master = torch.empty(n, dtype=torch.float32, device=device)
        self.params = torch.empty(n, dtype=dtype, device=device)
        self.grads = torch.zeros(n, dtype=dtype, device=device)
        off = 0
        for p in params:
            k = p.numel()
            self.master[off : off + k].copy_(p.detach().view(-1))
            self.params[off : off + k].copy_(self.master[off : off + k])
            p.data = self.params[off : off + k].view(p.shape)
            p.grad = self.grads[off : off + k].view(p.shape)
            off += k
        self.m = torch.zeros_like(self.master)
        self.v = torch.zeros_like(self.master)
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.grad_clip, self.stochastic, self.seed = grad_clip, stochastic_rounding, seed
        self.t = 0
        self.norm = torch.zeros(2, dtype=torch.float32, device=device)  # [norm, clip factor]
        self.blocks = sm_count() * 2 if device.type == "cuda" else 1
        self.partials = torch.empty(self.blocks, dtype=torch.float32, device=device)
        self.param_groups = [{"lr": lr}]  # what the training loop's lr setter touches

    def zero_grad(self, set_to_none: bool = False) -> None:
        self.grads.zero_()  # never None: the views must stay the .grad of every parameter

    def grad_norm(self) -> torch.Tensor:
        """Writes [norm, clip factor] into self.norm on the device and returns it."""
        if _use_kernels(self.grads):
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
        if _use_kernels(self.grads):
            n = self.grads.numel()
            launch("adamw", "adamw_update", min((n + 255) // 256, self.blocks * 8), 256, self.params, self.master,
                   self.m, self.v, self.grads, self.norm, _i64(n), _i64(self.n_decay), float(lr), float(b1),
                   float(b2), float(1 - b1**self.t), float(1 - b2**self.t), float(self.eps),
                   float(self.weight_decay), _u32(self.seed * 1_000_003 + self.t), int(self.stochastic))
        else:
            reference.adamw_update(self.params, self.master, self.m, self.v, self.grads, self.norm, self.n_decay,
                                   lr, b1, b2, self.t, self.eps, self.weight_decay)
        return self.norm[0]

    def state_dict(self) -> dict:
        return {"t": self.t, "master": self.master, "m": self.m, "v": self.v}

    def load_state_dict(self, state: dict) -> None:
        self.t = state["t"]
        for name in ("master", "m", "v"):
            getattr(self, name).copy_(state[name])


def _i64(x: int):
    import numpy as np

    return np.int64(x)


def _u32(x: int):
    import numpy as np

    return np.uint32(x % 2**32)
