"""The update's micro-step (forward, loss, backward) recorded as a CUDA graph once per shape and replayed.

At RL's shapes (a 64-row mini-batch of ~56 tokens on the 124M model) one forward and backward is ~10 ms of GPU
work but ~1,500 kernel launches from Python: the step waits on the CPU. A replayed graph launches them all at
once. What makes that correct:
- a shape's micro-steps run eagerly until it comes a second time (a shape seen once, e.g. a batch of prompts
  of an unusual length, is not worth a recording's sync and memory); the graph is recorded after that eager
  run, which was also its warm-up, and recording runs nothing, so no gradient is counted twice;
- the gradients are the optimizer's persistent flat buffer (ops/flat_adamw.py), so the recorded backward adds
  into them in place and each replay accumulates as an eager backward would; the optimizer's step stays
  outside (its step count and learning rate change every step);
- the weights are updated in place, so a replay reads the current ones; inputs are copied into the graph's
  own tensors before each replay, and its outputs (loss, statistics) are read before the next.
Only where that holds: CUDA, the kernels path, one process (several processes reduce gradients from backward
hooks), optimizers whose gradients are one persistent buffer (the flat AdamW: an optimizer that sets .grad to
None would leave the replays writing into freed memory), prompts without padding (the padded path builds a
cache model per call). Elsewhere: eager, the same arithmetic.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import fields, replace

import torch

from gpt2pipe.ops.flat_adamw import FlatAdamW
from gpt2pipe.rl.rollout import Experience


def _tensors(e: Experience, mb_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {f.name: getattr(e, f.name) for f in fields(e) if isinstance(getattr(e, f.name), torch.Tensor)}
    out["mb_mask"] = mb_mask
    return out


class MicroStep:
    """step(e, mb_mask) -> statistics: loss_of(e, mb_mask) -> (loss, stats), then backward of loss x scale.
    The returned statistics are the graph's own tensors: use them before the next call."""

    def __init__(self, loss_of: Callable, scale: float, graphs: bool):
        self.loss_of, self.scale, self.graphs = loss_of, scale, graphs
        self.recorded: dict[tuple, tuple] = {}  # shape key -> (graph, static inputs, static statistics)
        self.seen: set[tuple] = set()  # shapes run once (eagerly)
        self.pool = None  # one memory pool shared by the graphs of every shape (replayed one at a time)

    def eager(self, e: Experience, mb_mask: torch.Tensor) -> dict:
        loss, stats = self.loss_of(e, mb_mask)
        (loss * self.scale).backward()
        return {k: v.detach() for k, v in stats.items()}

    def __call__(self, e: Experience, mb_mask: torch.Tensor) -> dict:
        if not self.graphs or e.valid is not None:
            return self.eager(e, mb_mask)
        inputs = _tensors(e, mb_mask)
        key = tuple((k, tuple(v.shape), v.dtype) for k, v in inputs.items())
        if key not in self.recorded:
            stats = self.eager(e, mb_mask)
            if key not in self.seen:
                self.seen.add(key)
                return stats
            try:
                self.recorded[key] = self._record(e, inputs)
            except Exception as err:  # noqa: BLE001 — a speed-up only: the eager micro-steps stay correct
                warnings.warn(f"rl: the update's CUDA graph could not be recorded ({type(err).__name__}: {err}); "
                              "it runs eagerly", stacklevel=2)
                self.graphs, self.recorded, self.pool = False, {}, None  # the graphs' memory goes back
            return stats
        graph, static, stats = self.recorded[key]
        for k, v in inputs.items():
            static[k].copy_(v)
        graph.replay()
        return stats

    def _record(self, e: Experience, inputs: dict[str, torch.Tensor]):
        static = {k: v.clone() for k, v in inputs.items()}
        static_e = replace(e, **{k: v for k, v in static.items() if k != "mb_mask"})
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize()
        with torch.cuda.graph(graph, pool=self.pool):
            stats = self.eager(static_e, static["mb_mask"])
        return graph, static, stats


def graphs_apply(model, optimizers: list, device: torch.device, world_size: int) -> bool:
    """Whether the update's micro-steps may be recorded (see the module's note)."""
    return (device.type == "cuda" and getattr(model, "ops", None) == "kernels" and world_size == 1
            and all(isinstance(o, FlatAdamW) and not o.sharded_grads for o in optimizers))
