"""A loader's micro-batches on the training device, read one ahead.

The training loop asks for the next micro-batch right after it has queued the current one's forward and
backward, so reading the shard and the pinned copy to the GPU happen while the GPU computes, also across the
step's one host sync (at 65,536 tokens a step on an H200 the data path took 0.8 ms of a 120 ms step before,
0.4 ms after: docs/benchmarks.md). The position saved with the training state is that of the first batch
not yet handed out, so a resume reads the batch that was only fetched ahead.
"""

from __future__ import annotations

import torch

from gpt2pipe.data.loader import ShardLoader


class DeviceBatches:
    """ShardLoader's batches as device tensors, at most one fetched ahead (prefetch)."""

    def __init__(self, loader: ShardLoader, device: torch.device):
        self.loader, self.device = loader, device
        # "epoch N begins" is said when its first batch is handed out, not fetched: a run that ends on an
        # epoch's last step fetches the next epoch's first batch and never trains on it
        self.say, loader.log = loader.log, None
        self._epoch = loader.epoch
        self._ahead: tuple[torch.Tensor, torch.Tensor, int, int] | None = None  # x, y, epoch, position before
        self._failed: Exception | None = None  # reading the batch ahead failed: raised when it is asked for

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (inputs, targets), int64 (B, T) on the device."""
        if self._failed is not None:
            failed, self._failed = self._failed, None
            raise failed
        (x, y, epoch, _), self._ahead = self._ahead or self._fetch(), None
        if epoch != self._epoch:
            self._epoch = epoch
            if self.say:
                self.say(self.loader.epoch_begins(epoch))
        return x, y

    def prefetch(self) -> None:
        """Read and start copying the next batch now (no-op when one is already ahead). A batch that fails to
        read (a foreign token, an unreadable shard) fails the step that uses it, not the step before, which
        may be one that saves a checkpoint."""
        if self._ahead is None and self._failed is None:
            try:
                self._ahead = self._fetch()
            except Exception as e:  # noqa: BLE001 (any error: it belongs to the next next_batch)
                self._failed = e

    def _fetch(self) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        before = self.loader.sample, self.loader.epoch
        try:
            x, y = self.loader.next_batch()
            if self.device.type == "cuda":  # from pageable memory the copy may wait for the GPU's queue
                x, y = x.pin_memory(), y.pin_memory()
            return (x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True), self.loader.epoch,
                    before[0])
        except BaseException:  # a batch read but not delivered (a failed copy) is read again
            self.loader.sample, self.loader.epoch = before
            raise

    def state_dict(self) -> dict:
        # a batch fetched but not handed out: the position is still before it
        return self.loader.state_dict(None if self._ahead is None else self._ahead[3])

    def load_state_dict(self, state: dict) -> None:
        self._ahead = self._failed = None
        self.loader.load_state_dict(state)
        self._epoch = self.loader.epoch
