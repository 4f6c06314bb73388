"""ZeRO-3 for the torch/compile path: the model itself sharded through FSDP2 (`fully_shard`), behind the
training loop's optimizer protocol.

Each transformer block and then the root (embeddings, final norm, tied head) is sharded across processes:
every process keeps 1/world of the fp32 weights, gradients and AdamW moments, and a block's full weights
exist only while it runs (all-gathered before, freed after). On GPUs the gathered weights are bf16 and
gradients are reduced in fp32 (MixedPrecisionPolicy); on CPU everything stays fp32. With gradient
accumulation FSDP2 reduce-scatters every micro-step into the sharded gradients.

Checkpoints keep the format of the other stages: the whole-model optimizer state {"t", "master", "m", "v"}
(fp32, CPU, `ordered_params` order) and the whole state_dict, gathered to process 0 one parameter at a time;
loading takes each process's own shard from the whole tensors. So a run resumes across process counts and
ZeRO stages (1 -> 3, 3 -> 1, 3 on two processes -> one process).
"""

from __future__ import annotations

import warnings

import torch
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from gpt2pipe.config import TrainConfig
from gpt2pipe.distributed import World
from gpt2pipe.train.adamw import TorchAdamW


# GPT.forward returns logits as a view (padding columns dropped); nothing modifies them in place
warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")


def _whole(x: torch.Tensor, main: bool) -> torch.Tensor | None:
    """All-gather one sharded tensor (collective) and keep it, fp32 on CPU, on process 0 only."""
    full = x.full_tensor() if isinstance(x, DTensor) else x
    return full.detach().float().cpu() if main else None


def _shard_of(like: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
    """This process's shard of `whole` (every process holds all of it, e.g. memory-mapped from the state
    file), laid out as the sharded tensor `like`; no communication."""
    whole = whole.to(device=like.device, dtype=like.dtype).view(like.shape)
    if not isinstance(like, DTensor):
        return whole
    return distribute_tensor(whole, like.device_mesh, like.placements, src_data_rank=None)


class FsdpAdamW(TorchAdamW):
    """torch.optim.AdamW on the FSDP2-sharded (DTensor) parameters; decay on 2-D weights only. The update,
    the skipped step and the parameter groups are TorchAdamW's; the norm and the state gather across shards."""

    def __init__(self, model: torch.nn.Module, t: TrainConfig, world: World, device: torch.device):
        mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if device.type == "cuda" else MixedPrecisionPolicy())
        for block in model.transformer.h:
            fully_shard(block, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        super().__init__(model, t, device, world)  # FSDP2 reduce-scatters every backward on its own hooks
        self.n = sum(p.numel() for p in self.params)
        self.local = sum(p.to_local().numel() for p in self.params)

    def global_norm(self) -> torch.Tensor:
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip if self.grad_clip > 0 else float("inf"))
        return norm.full_tensor() if isinstance(norm, DTensor) else norm  # replicated: no traffic

    def whole_state(self) -> dict | None:
        main = self.world.main
        master, m, v = [], [], []
        state = self.inner.state
        for p in self.params:  # one parameter at a time: the extra GPU memory is one whole tensor
            master.append(_whole(p, main))
            s = state.get(p)
            m.append(_whole(s["exp_avg"], main) if s else (torch.zeros(p.shape) if main else None))
            v.append(_whole(s["exp_avg_sq"], main) if s else (torch.zeros(p.shape) if main else None))
        if not main:
            return None
        t = int(state[self.params[0]]["step"]) if state.get(self.params[0]) else 0
        flat = lambda xs: torch.cat([x.reshape(-1) for x in xs])  # noqa: E731
        return {"t": t, "master": flat(master), "m": flat(m), "v": flat(v)}

    def load_whole_state(self, state: dict, weights_from_master: bool) -> None:
        # fp32 sharded weights are the master weights: always take them from the fp32 copy
        sd = self.inner.state_dict()
        off = 0
        t = int(state["t"])
        for i, p in enumerate(self.params):
            k = p.numel()
            with torch.no_grad():
                p.to_local().copy_(_shard_of(p, state["master"][off : off + k]).to_local())
            if t > 0:
                sd["state"][i] = {"step": torch.tensor(float(t)),
                                  "exp_avg": _shard_of(p, state["m"][off : off + k]),
                                  "exp_avg_sq": _shard_of(p, state["v"][off : off + k])}
            off += k
        self.inner.load_state_dict(sd)

    def model_weights(self) -> dict[str, torch.Tensor] | None:
        main = self.world.main
        out = {k: _whole(v, main) for k, v in self.model.state_dict().items()}
        return out if main else None

    def load_model_weights(self, weights: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for k, v in self.model.state_dict().items():
                local = _shard_of(v, weights[k])
                (v.to_local() if isinstance(v, DTensor) else v).copy_(
                    local.to_local() if isinstance(local, DTensor) else local)

    def describe(self) -> str:
        return (f"ZeRO-3 (FSDP2): {self.world.size} processes, rank {self.world.rank} holds weights, gradients "
                f"and optimizer state for {self.local:,} of {self.n:,} parameters")
