"""What protects a long run: skipping updates on non-finite or outlier losses and gradient norms (llm.c's
outlier detector), and turning a scheduler's preemption signal into a saved state and exit code 75."""

from __future__ import annotations

import collections
import contextlib
import math
import signal
import threading

from gpt2pipe import Gpt2pipeError
from gpt2pipe.config import TrainConfig


class OutlierDetector:
    """z-score of a value against the previous `window` values (llm.c's, window 128); nan until the window is full."""

    def __init__(self, window: int = 128):
        self.values: collections.deque[float] = collections.deque(maxlen=window)

    def update(self, x: float) -> float:
        z = float("nan")
        if len(self.values) == self.values.maxlen:
            mean = sum(self.values) / len(self.values)
            std = (sum((v - mean) ** 2 for v in self.values) / len(self.values)) ** 0.5
            z = (x - mean) / std if std > 0 else (0.0 if x == mean else math.inf)
        if math.isfinite(x):
            self.values.append(x)
        return z

    def state_dict(self) -> list[float]:
        return list(self.values)

    def load_state_dict(self, values: list[float]) -> None:
        self.values.clear()
        self.values.extend(values)


class UpdateGuard:
    """Decides, per step, whether the update may move the weights: a non-finite loss or norm, or (when
    enabled) a z-score above the thresholds, skips it; max_skipped_steps skips in a row stop the run."""

    def __init__(self, t: TrainConfig):
        self.t = t
        self.loss, self.norm = OutlierDetector(), OutlierDetector()
        self.skipped_in_a_row = 0

    def check(self, step: int, loss: float, norm: float) -> tuple[bool, str]:
        """(skip, reason) for this step; raises when too many updates in a row were skipped."""
        lossz, normz = self.loss.update(loss), self.norm.update(norm)
        t = self.t
        skip = (not math.isfinite(loss) or not math.isfinite(norm)
                or (t.skip_update_lossz > 0 and lossz > t.skip_update_lossz)
                or (t.skip_update_gradz > 0 and normz > t.skip_update_gradz))
        if not skip:
            self.skipped_in_a_row = 0
            return False, ""
        self.skipped_in_a_row += 1
        if self.skipped_in_a_row >= t.max_skipped_steps:
            raise Gpt2pipeError(f"step {step}: {self.skipped_in_a_row} updates in a row skipped for a non-finite "
                                "or outlier loss/grad norm; stopping (the last saved state is kept)")
        return True, f"update skipped (loss {loss:.4f}, z {lossz:.1f}; grad norm {norm:.2f}, z {normz:.1f})"

    def state_dict(self) -> dict:
        return {"loss": self.loss.state_dict(), "norm": self.norm.state_dict(), "skipped_in_a_row": self.skipped_in_a_row}

    def load_state_dict(self, state: dict) -> None:
        self.loss.load_state_dict(state["loss"])
        self.norm.load_state_dict(state["norm"])
        self.skipped_in_a_row = state["skipped_in_a_row"]


class Preempted(Gpt2pipeError):
    """SIGTERM/SIGUSR1 arrived: the state was saved and the run should be requeued (exit code 75)."""

    exit_code = 75


@contextlib.contextmanager
def stop_signals():
    """Turn SIGTERM/SIGUSR1 (a scheduler's preemption notice) into a flag the loop checks after each step;
    the previous handlers come back afterwards."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum))
                for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
