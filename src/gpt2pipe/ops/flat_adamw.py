"""AdamW over one flat parameter buffer with fp32 master weights (llm.c's optimizer layout), ZeRO-1 sharded.

All parameters become views into one buffer (bf16 on the kernels path) and their gradients views into one
gradient buffer, decayed (2-D) tensors first. With several processes, each owns 1/world of the buffer:
gradients are reduce-scattered (averaged) into its shard, it keeps master weights and moments for that
shard only, updates it, and the updated parameters are all-gathered. The global gradient norm and clip
factor stay on the device (no host sync). On CPU the update runs through reference.adamw_update.

ZeRO-2 (zero=2, several processes) also shards the gradients: there is no full-size gradient buffer. Autograd
writes each parameter's gradient; as soon as a bucket's gradients are complete they are packed, reduce-
scattered into this process's sharded gradient accumulator and freed — on every micro-step, so gradient
accumulation costs one reduce-scatter per micro-step instead of one per step. Peak memory drops by about
the gradient buffer (minus the buckets in flight); the norm, clipping, update and saved state are the same.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from gpt2pipe.distributed import World
from gpt2pipe.ops import reference, use_kernels
from gpt2pipe.ops.cuda import launch, sm_count
from gpt2pipe.ops.flat_layout import BUCKET_ELEMENTS, Bucket, make_buckets, ordered_params

# torch >= 2.12 renames the flat-tensor collectives (same arguments); older releases have only the old names
_reduce_scatter = getattr(dist, "reduce_scatter_single", dist.reduce_scatter_tensor)
_all_gather = getattr(dist, "all_gather_single", dist.all_gather_into_tensor)


class FlatAdamW:
    def __init__(self, model: torch.nn.Module, lr: float, betas=(0.9, 0.95), eps: float = 1e-8,
                 weight_decay: float = 0.1, grad_clip: float = 1.0, stochastic_rounding: bool = True,
                 seed: int = 0, dtype: torch.dtype = torch.bfloat16, world: World = World(),
                 bucket_elements: int = BUCKET_ELEMENTS, zero: int = 1):
        params = ordered_params(model)
        self.sharded_grads = zero >= 2 and world.distributed  # ZeRO-2: no full gradient buffer
        self.n = sum(p.numel() for p in params)
        self.world = world
        self.buckets = make_buckets(params, world, bucket_elements)
        start = sum(b.size for b in self.buckets)  # the padded flat length
        local = start // world.size  # this process's shard
        device = params[0].device
        full = torch.zeros(start, dtype=torch.float32, device=device)
        self.params = torch.zeros(start, dtype=dtype, device=device)
        self.total, self.dtype = start, dtype  # the padded flat length
        # ZeRO-2 keeps no full gradient buffer: an empty stand-in, so every use of it below is a no-op
        self.grads = torch.zeros(0 if self.sharded_grads else start, dtype=dtype, device=device)
        self.layout = []  # (numel, start in the flat buffer) of each parameter, in ordered_params order
        for b in self.buckets:
            off = b.start
            for p in b.params:
                k = p.numel()
                full[off : off + k].copy_(p.detach().view(-1))
                self.params[off : off + k].copy_(full[off : off + k])
                p.data = self.params[off : off + k].view(p.shape)
                if not self.sharded_grads:  # ZeRO-2: autograd allocates .grad, freed after its reduce-scatter
                    p.grad = self.grads[off : off + k].view(p.shape)
                self.layout.append((k, off))
                off += k
        if world.distributed:  # this process's slices, packed: the ZeRO-1 shard
            self.master = torch.cat([full[b.own : b.own + b.slice] for b in self.buckets])
            self.grad_shard = (torch.zeros if self.sharded_grads else torch.empty)(local, dtype=dtype, device=device)
            self.param_shard = torch.empty(local, dtype=dtype, device=device)
        else:  # one process: the shard is the whole buffer, no copies
            self.master, self.grad_shard, self.param_shard = full, self.grads, self.params
        self.m = torch.zeros_like(self.master)
        self.v = torch.zeros_like(self.master)
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.grad_clip, self.stochastic, self.seed = grad_clip, stochastic_rounding, seed
        self.t = 0
        self.norm = torch.zeros(2, dtype=torch.float32, device=device)  # [norm, clip factor]
        self.blocks = sm_count() * 2 if device.type == "cuda" else 1
        self.partials = torch.empty(self.blocks, dtype=torch.float32, device=device)
        self.param_groups = [{"lr": lr}]  # what the training loop's lr setter touches
        self.kernels = use_kernels(self.params) and dtype == torch.bfloat16  # our kernels read/write bf16
        # overlap: during the backward pass that completes the gradients, each bucket is reduce-scattered
        # as soon as all its parameters have their gradient (post-accumulate hooks)
        self._overlap, self._pending, self._handles = False, [], {}
        self._in_flight: list = []  # ZeRO-2: (handle, reduced slice, bucket) not yet added
        if self.sharded_grads:
            # two persistent slots (packed bucket, its reduced slice), used in turn: at most two buckets are in
            # flight, with no allocation per bucket and no tensor handed between streams through the allocator
            big = max(b.size for b in self.buckets)
            self._slots = [(torch.empty(big, dtype=dtype, device=device),
                            torch.empty(big // world.size, dtype=dtype, device=device)) for _ in range(2)]
            self._slot = 0
        if self.sharded_grads:  # every backward reduces its buckets as they complete
            self._overlap, self._pending = True, [len(b.params) for b in self.buckets]
        if world.distributed:
            for i, b in enumerate(self.buckets):
                for p in b.params:
                    p.register_post_accumulate_grad_hook(lambda p, i=i: self._grad_ready(i))

    def overlap_next_backward(self) -> None:
        """Call before the backward pass of the last micro-batch of a step: its buckets are reduced as
        they complete, overlapping communication with the rest of the backward pass."""
        if self.world.distributed and not self.sharded_grads:
            self._overlap = True
            self._pending = [len(b.params) for b in self.buckets]
            self._handles = {}

    def _grad_ready(self, i: int) -> None:
        if not self._overlap:
            return
        self._pending[i] -= 1
        if self._pending[i] == 0:
            if self.sharded_grads:
                self._pending[i] = len(self.buckets[i].params)  # ready for the next micro-step
                self._reduce_sharded(self.buckets[i])
            else:
                self._handles[i] = self._reduce(self.buckets[i], async_op=True)

    def _reduce_sharded(self, b: Bucket) -> None:
        """ZeRO-2: pack the bucket's gradients (missing ones count as zero) into the next slot, free them, and
        reduce-scatter the pack asynchronously; the buckets launched before it are finished (added to the
        accumulator) now, so at most two buckets are in flight while the backward pass goes on. The slot was
        last used two buckets ago, and that collective has been waited for (on this stream) since."""
        packed, out = self._slots[self._slot]
        self._slot ^= 1
        packed, out = packed[: b.size], out[: b.slice]
        off = 0
        for p in b.params:
            k = p.numel()
            if p.grad is not None:
                packed[off : off + k].copy_(p.grad.view(-1))
                p.grad = None
            else:
                packed[off : off + k].zero_()
            off += k
        packed[off:].zero_()  # padding to a multiple of the process count
        handle = _reduce_scatter(out, packed, async_op=True)
        self._finish_in_flight()
        self._in_flight.append((handle, out, b))

    def _finish_in_flight(self) -> None:
        """Wait for the reduce-scatters launched so far and add them into the sharded accumulator (wait()
        orders this stream after the collective, so the slots may be refilled afterwards)."""
        for handle, out, b in self._in_flight:
            handle.wait()
            self.grad_shard[b.local : b.local + b.slice] += out
        self._in_flight = []

    def _reduce(self, b: Bucket, async_op: bool = False):
        return _reduce_scatter(self.grad_shard[b.local : b.local + b.slice],
                                          self.grads[b.start : b.start + b.size], async_op=async_op)

    def zero_grad(self, set_to_none: bool = False) -> None:
        """ZeRO-1: zero the flat buffer (never None: the views must stay the .grad of every parameter);
        ZeRO-2: zero the sharded accumulator and drop any gradient a bucket still holds."""
        if self.sharded_grads:
            self._finish_in_flight()
            self.grad_shard.zero_()
            for b in self.buckets:
                for p in b.params:
                    p.grad = None
            self._pending = [len(b.params) for b in self.buckets]
        else:
            self.grads.zero_()

    def grad_norm(self) -> torch.Tensor:
        """Average the gradients into this process's shard (reduce-scatter; buckets already launched
        during backward are just waited for), then write [norm, clip factor] of the global gradient into
        self.norm on the device and return it."""
        if self.sharded_grads:  # buckets not complete at the end of backward (a parameter without gradient)
            for i, b in enumerate(self.buckets):
                if self._pending[i] != len(b.params):
                    self._pending[i] = len(b.params)
                    self._reduce_sharded(b)
            self._finish_in_flight()
        elif self.world.distributed:
            for i, b in enumerate(self.buckets):
                handle = self._handles.pop(i, None)
                if handle is not None:
                    handle.wait()
                else:
                    self._reduce(b)
        if self.world.distributed:
            self._overlap = self.sharded_grads  # ZeRO-2 reduces during every backward
            self.grad_shard /= self.world.size
            sq = self.grad_shard.float().square().sum()
            dist.all_reduce(sq)
            self.norm.copy_(reference.norm_and_scale(sq.sqrt(), self.grad_clip))
        elif self.kernels:
            n = self.grads.numel()
            launch("global_norm", "global_norm_partial", self.blocks, 1024, partials=self.partials, g=self.grads, n=n)
            launch("global_norm", "global_norm_finalize", 1, 1024, out=self.norm, partials=self.partials,
                   count=self.blocks, max_norm=float(self.grad_clip))
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
        for b in self.buckets:  # one launch per bucket: weight decay and rounding seeds follow the bucket
            sl = slice(b.local, b.local + b.slice)
            decay = b.slice if b.decay else 0
            if self.kernels:
                launch("adamw", "adamw_update", min((b.slice + 255) // 256, self.blocks * 8), 256,
                       params=self.param_shard[sl], master=self.master[sl], m=self.m[sl], v=self.v[sl],
                       grads=self.grad_shard[sl], clip=self.norm, n=b.slice, n_decay=decay, offset=b.own,
                       lr=float(lr), beta1=float(b1), beta2=float(b2), bias1=float(1 - b1**self.t),
                       bias2=float(1 - b2**self.t), eps=float(self.eps), weight_decay=float(self.weight_decay),
                       seed=(self.seed * 1_000_003 + self.t) % 2**32, stochastic=int(self.stochastic))
            else:
                reference.adamw_update(self.param_shard[sl], self.master[sl], self.m[sl], self.v[sl],
                                       self.grad_shard[sl], self.norm, decay, lr, b1, b2, self.t, self.eps,
                                       self.weight_decay)
            if self.world.distributed:
                _all_gather(self.params[b.start : b.start + b.size], self.param_shard[sl])
        return self.norm[0]

    def _own_ranges(self):
        """(bucket, start, stop, position) for every piece of a parameter that lies in this process's slices:
        padded-buffer positions [start, stop) and where they sit in the unpadded, parameter-order vector."""
        pos = 0
        for k, off in self.layout:
            for b in self.buckets:
                lo, hi = max(off, b.own), min(off + k, b.own + b.slice)
                if lo < hi:
                    yield b, lo, hi, pos + lo - off
            pos += k

    def gathered_state(self) -> dict | None:
        """Whole-model state {"t", "master", "m", "v"} (fp32, CPU, parameter order, no padding) on process 0,
        None elsewhere, so a run resumes on any number of processes. Collective: every process calls it.
        Gathered one bucket at a time into process 0 alone: the extra GPU memory is one bucket."""
        main = self.world.rank == 0
        out = {name: torch.empty(self.total, dtype=torch.float32) if main else None
               for name in ("master", "m", "v")}
        for name in out:
            shard = getattr(self, name)
            for b in self.buckets:
                piece = shard[b.local : b.local + b.slice]
                if self.world.distributed:
                    parts = [torch.empty_like(piece) for _ in range(self.world.size)] if main else None
                    dist.gather(piece, parts, dst=0)
                    piece = torch.cat(parts) if main else None
                if main:
                    out[name][b.start : b.start + b.size] = piece.cpu()
        if not main:
            return None
        unpadded = {name: torch.cat([buf[off : off + k] for k, off in self.layout]) for name, buf in out.items()}
        return {"t": self.t, **unpadded}

    def load_state_dict(self, state: dict) -> None:
        """Take this process's part of a whole-model state (CPU tensors, e.g. memory-mapped from the saved
        file: only the pages of this process's slices are read)."""
        self.t = int(state["t"])
        for name in ("master", "m", "v"):
            src, dst = state[name], getattr(self, name)
            for b, lo, hi, at in self._own_ranges():
                local = b.local + lo - b.own
                dst[local : local + hi - lo].copy_(src[at : at + hi - lo])

    def weights_from_master(self) -> None:
        """Set the model's weights from the fp32 master weights (rounded to the weights' dtype)."""
        self.param_shard.copy_(self.master)
        if self.world.distributed:
            for b in self.buckets:
                _all_gather(self.params[b.start : b.start + b.size], self.param_shard[b.local : b.local + b.slice])

    @property
    def n_decay(self) -> int:
        """Elements of this process's shard that get weight decay (decayed buckets come first)."""
        return sum(b.slice for b in self.buckets if b.decay)

    def shard_size(self) -> int:
        return self.master.numel()
