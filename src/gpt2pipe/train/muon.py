"""Muon for the transformer blocks' 2-D weights, our flat AdamW for everything else, behind the training
loop's Optimizer protocol (train.optimizer: muon).

Muon (Keller Jordan's modded-nanogpt): Nesterov momentum of each weight matrix's gradient, orthogonalised by
five quintic Newton-Schulz iterations in bf16, scaled by max(1, rows / cols) ** 0.5 — the packed qkv
projection as its three matrices q, k and v, as modded-nanogpt's separate (later batched) q, k, v weights. The embeddings, the
lm_head and every 1-D gain and bias stay with AdamW (ops/flat_adamw.FlatAdamW over that subset of the
parameters), with the run's learning_rate, betas and weight_decay.

Sharding (several processes), ZeRO-1 style: each Muon matrix is owned by one process (balanced by size).
Its gradient is reduced (averaged) into the owner, launched from a gradient hook as soon as the last
micro-step's backward has produced it; the owner alone keeps its momentum (and its fp32 master weight when
the model's weights are bf16, on the kernels path), computes the update and broadcasts the new weight. So
the Muon state is split across processes, the AdamW state as FlatAdamW splits it.

The saved whole-model state keeps the AdamW layout: "master" holds every parameter (fp32, ordered_params
order), "m" and "v" the AdamW moments of the AdamW parameters, "muon_momentum" the momentum of the Muon
matrices (their order in ordered_params) — nothing in it depends on the process count.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn

from gpt2pipe import Gpt2pipeError
from gpt2pipe.config import TrainConfig
from gpt2pipe.distributed import World
from gpt2pipe.ops import reference
from gpt2pipe.ops.flat_adamw import FlatAdamW
from gpt2pipe.ops.flat_layout import ordered_params
from gpt2pipe.train.muon_buffers import MuonBuffers
from gpt2pipe.train.newton_schulz import orthogonal_updates, row_blocks
from gpt2pipe.train.optimizer_protocol import PlainWeights  # every process holds the whole model

def hidden_matrices(model: nn.Module) -> dict[int, list[int] | None]:
    """The parameters Muon trains — the >= 2-D weights inside the transformer blocks (not the embeddings,
    not the lm_head, no 1-D gains or biases) — by id, each with the row blocks orthogonalised separately:
    the packed qkv projection is its q, k and v (as modded-nanogpt's separate or batched q, k, v weights;
    k and v may be narrower with grouped-query attention), SwiGLU's packed input its gate and up matrices;
    every other matrix is one block (None)."""
    swiglu = getattr(getattr(model, "config", None), "mlp", None) == "swiglu"
    out: dict[int, list[int] | None] = {}
    for name, p in model.transformer.h.named_parameters():
        if p.dim() >= 2 and p.requires_grad:
            rows, cols = p.shape[-2:]
            out[id(p)] = None
            if name.endswith("attn.c_attn.weight") and rows > cols and (rows - cols) % 2 == 0:
                out[id(p)] = [cols, (rows - cols) // 2, (rows - cols) // 2]
            elif swiglu and name.endswith("mlp.c_fc.weight") and rows % 2 == 0:  # packed [gate | up]
                out[id(p)] = [rows // 2, rows // 2]
    return out


def owners(sizes: list[int], world_size: int) -> list[int]:
    """The process that owns each matrix: largest first, each to the least loaded process (ties: the lowest
    rank), so the Muon state is split about evenly and every process computes the same assignment."""
    load = [0] * world_size
    out = [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        r = min(range(world_size), key=lambda r: (load[r], r))
        out[i] = r
        load[r] += sizes[i]
    return out


class MuonAdamW(PlainWeights):
    """Muon + FlatAdamW behind the training loop's Optimizer protocol (train/optimizer_protocol.py), on the torch path
    (fp32 weights) and the kernels path (bf16 weights, fp32 master weights), one or several processes."""

    def __init__(self, model: nn.Module, t: TrainConfig, world: World = World(),
                 dtype: torch.dtype = torch.float32, stochastic_rounding: bool = True):
        self.model, self.world = model, world
        self.order = ordered_params(model)
        muon_ids = hidden_matrices(model)
        self.muon = [p for p in self.order if id(p) in muon_ids]
        self.blocks = [muon_ids[id(p)] for p in self.muon]
        rest = [p for p in self.order if id(p) not in muon_ids]
        if not self.muon:
            raise Gpt2pipeError("train.optimizer muon: the model has no 2-D weights in its transformer blocks")
        # FlatAdamW takes a module: a container of the AdamW parameters (the same objects, already in
        # ordered_params order, so its flat layout is this subset's order)
        self.adam = FlatAdamW(nn.ParameterList(rest), lr=t.learning_rate, betas=(t.beta1, t.beta2), eps=t.eps,
                              weight_decay=t.weight_decay, grad_clip=t.grad_clip,
                              stochastic_rounding=stochastic_rounding, seed=t.seed, dtype=dtype, world=world,
                              zero=min(t.zero, 2))
        self.grad_clip = t.grad_clip
        self.lr_ratio = t.muon_learning_rate / t.learning_rate  # the schedule's multiplier applies to both
        self.momentum, self.weight_decay = t.muon_momentum, t.muon_weight_decay
        self.owner = owners([p.numel() for p in self.muon], world.size)
        self.mine = [i for i, r in enumerate(self.owner) if r == world.rank]
        # weights and gradients as views into flat buffers; momentum and fp32 master weights (where the
        # model's are bf16, the kernels path) over this process's slice
        self.flat = MuonBuffers(self.muon, self.owner, world.rank, dtype)
        self.param_groups = self.adam.param_groups
        self._handles: dict[int, object] = {}
        self._overlap = False
        if world.distributed:
            for i, p in enumerate(self.muon):
                p.register_post_accumulate_grad_hook(lambda p, i=i: self._grad_ready(i))

    # --- gradients ---------------------------------------------------------------------------------
    def _grad_ready(self, i: int) -> None:
        if self._overlap and i not in self._handles:
            self._handles[i] = dist.reduce(self.muon[i].grad, dst=self.owner[i], async_op=True)

    def prepare_last_backward(self) -> None:
        self.adam.overlap_next_backward()
        self._overlap = self.world.distributed

    def global_norm(self) -> torch.Tensor:
        """Averaged gradients (AdamW's reduce-scattered, each Muon matrix's reduced into its owner), then the
        norm of all of them together and the clip factor, in self.adam.norm (the AdamW update reads it)."""
        adam_norm = self.adam.grad_norm()[0]
        if self.world.distributed:  # (a matrix no gradient reached keeps its zeroed one)
            for i, p in enumerate(self.muon):
                if i not in self._handles:
                    self._handles[i] = dist.reduce(p.grad, dst=self.owner[i], async_op=True)
            for h in self._handles.values():
                h.wait()
            self._handles, self._overlap = {}, False
            self.flat.my_grads().div_(self.world.size)
        sq = torch.zeros((), dtype=torch.float32, device=adam_norm.device)
        for i in self.mine:  # per matrix, as the saved runs' norms were summed (the clip factor to the last bit)
            sq += self.muon[i].grad.float().square().sum()
        if self.world.distributed:
            dist.all_reduce(sq)
        self.adam.norm.copy_(reference.norm_and_scale((adam_norm.square() + sq).sqrt(), self.grad_clip))
        return self.adam.norm[0].clone()

    # --- update --------------------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, lr: float) -> None:
        self.adam.step(lr, norm_ready=True)
        muon_lr = lr * self.lr_ratio
        flat = self.flat
        ahead = flat.momentum_step(self.adam.norm[1], self.momentum)  # Nesterov's look-ahead, bf16
        if self.weight_decay:
            flat.master.mul_(1 - muon_lr * self.weight_decay)

        items = [(i, rows, shape) for i in self.mine for rows, shape in row_blocks(self.muon[i].shape, self.blocks[i])]
        for i, rows, u, scale in orthogonal_updates(items, lambda i, rows: flat.owned(ahead, i)[rows]):
            flat.owned(flat.master, i)[rows].add_(u, alpha=-muon_lr * scale)
        flat.publish()
        self._broadcast()
        self.discard()

    def _broadcast(self) -> None:
        if self.world.distributed:
            handles = [dist.broadcast(p.data, src=self.owner[i], async_op=True) for i, p in enumerate(self.muon)]
            for h in handles:
                h.wait()

    def discard(self) -> None:
        for h in self._handles.values():  # reduces launched for a step that is skipped
            h.wait()
        self._handles, self._overlap = {}, False
        self.adam.zero_grad()
        self.flat.zero_grads()

    # --- whole-model state ------------------------------------------------------------------------------
    def _layout(self):
        """(parameter, offset in the whole flat vector, is Muon, index in its own group's flat vector)."""
        muon_ids = {id(p) for p in self.muon}
        off = a_off = m_off = 0
        for p in self.order:
            k = p.numel()
            if id(p) in muon_ids:
                yield p, off, True, m_off
                m_off += k
            else:
                yield p, off, False, a_off
                a_off += k
            off += k

    def _from_owner(self, i: int, tensor: torch.Tensor | None) -> torch.Tensor | None:
        """Collective over the owner and process 0: the owner's tensor (fp32, CPU) on process 0."""
        owner, rank = self.owner[i], self.world.rank
        if owner == 0 or not self.world.distributed:
            return tensor.detach().float().cpu() if rank == 0 else None
        if rank == owner:
            dist.send(tensor.detach().float().contiguous(), dst=0)
        elif rank == 0:
            got = torch.empty(self.muon[i].shape, dtype=torch.float32, device=self.adam.norm.device)
            dist.recv(got, src=owner)
            return got.cpu()
        return None

    def whole_state(self) -> dict | None:
        adam = self.adam.gathered_state()
        pieces = {}
        for i, p in enumerate(self.muon):
            mine = i in self.mine
            master = self._from_owner(i, self.flat.owned(self.flat.master, i) if mine else None)
            buf = self._from_owner(i, self.flat.owned(self.flat.momentum, i) if mine else None)
            pieces[i] = (master, buf)
        if not self.world.main:
            return None
        n = sum(p.numel() for p in self.order)
        master = torch.empty(n, dtype=torch.float32)
        momentum = torch.empty(sum(p.numel() for p in self.muon), dtype=torch.float32)
        index = {id(p): i for i, p in enumerate(self.muon)}
        for p, off, is_muon, at in self._layout():
            k = p.numel()
            if is_muon:
                m, b = pieces[index[id(p)]]
                master[off : off + k] = m.reshape(-1)
                momentum[at : at + k] = b.reshape(-1)
            else:
                master[off : off + k] = adam["master"][at : at + k]
        return {"t": adam["t"], "master": master, "m": adam["m"], "v": adam["v"], "muon_momentum": momentum}

    def load_whole_state(self, state: dict, weights_from_master: bool) -> None:
        if "muon_momentum" not in state:
            raise Gpt2pipeError("the saved optimizer state has no Muon momentum (saved by another optimizer)")
        index = {id(p): i for i, p in enumerate(self.muon)}
        flat, adam_master = self.flat, []
        for p, off, is_muon, at in self._layout():
            k = p.numel()
            if not is_muon:
                adam_master.append(state["master"][off : off + k])
                continue
            i = index[id(p)]
            if i not in self.mine:
                continue
            with torch.no_grad():  # (on the torch path the master is the weight itself)
                flat.owned(flat.momentum, i).copy_(state["muon_momentum"][at : at + k].view(p.shape))
                flat.owned(flat.master, i).copy_(state["master"][off : off + k].view(p.shape))
        self.adam.load_state_dict({"t": state["t"], "master": torch.cat(adam_master), "m": state["m"],
                                   "v": state["v"]})
        if weights_from_master:
            flat.publish()
            self.adam.weights_from_master()
        self._broadcast()  # every process gets the owners' weights

    def describe(self) -> str:
        held = sum(self.muon[i].numel() for i in self.mine)
        total = sum(p.numel() for p in self.muon)
        text = (f"Muon for {len(self.muon)} block matrices ({total:,} parameters), AdamW for {len(self.order) - len(self.muon)} "
                f"other tensors ({self.adam.n:,} parameters)")
        if self.world.distributed:
            stage = "ZeRO-2" if self.adam.sharded_grads else "ZeRO-1"
            text += (f"; {stage}: {self.world.size} processes, rank {self.world.rank} holds Muon state for "
                     f"{len(self.mine)} matrices ({held:,} parameters) and AdamW state for {self.adam.shard_size():,} "
                     f"of {self.adam.n:,} parameters")
        return text
