"""The two AdamW optimizers behind the training loop's protocol (train/optimizer_protocol.py): torch's AdamW
(one process, the torch path) and our flat AdamW with fp32 master weights (the kernels path, and ZeRO-1/2
sharding on several processes). Both save the same whole-model state (see train/optim.py).
"""

from __future__ import annotations

import torch

from gpt2pipe.config import TrainConfig
from gpt2pipe.distributed import World
from gpt2pipe.ops.flat_adamw import FlatAdamW
from gpt2pipe.ops.flat_layout import ordered_params
from gpt2pipe.train.optimizer_protocol import PlainWeights


class TorchAdamW(PlainWeights):
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


class ShardedAdamW(PlainWeights, FlatAdamW):
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
