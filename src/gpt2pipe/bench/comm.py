"""Communication time of one training step, read from a `torch.profiler` trace.

Definition (what `gpt2pipe bench` reports as *exposed comm*): the GPU time, within one profiled step, during
which an NCCL kernel runs and **no other GPU work** (compute kernel, memcpy, memset) runs on the same GPU —
i.e. the part of the communication that the backward pass did not hide and that lengthens the step.
*Comm total* is the union of all NCCL kernel intervals, overlapped or not. An NCCL kernel that is waiting for a
slower peer counts as communication: from this GPU's point of view that wait is on its critical path too.

We read the Chrome trace the profiler exports (`export_chrome_trace`), whose device events carry `cat`
("kernel", "gpu_memcpy", "gpu_memset"), `name`, `ts` and `dur` in microseconds: a stable, documented format,
unlike the profiler's in-memory event classes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

DEVICE_CATEGORIES = {"kernel", "gpu_memcpy", "gpu_memset"}


@dataclass(frozen=True)
class CommTime:
    exposed_ms: float   # NCCL running, nothing else on the GPU
    total_ms: float     # union of NCCL kernel intervals
    step_ms: float      # first device event's start to last device event's end


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Merge overlapping [start, end) intervals into disjoint, sorted ones."""
    out: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _length(intervals: list[tuple[float, float]]) -> float:
    return sum(end - start for start, end in intervals)


def _subtract(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """a minus b, both disjoint and sorted."""
    out, j = [], 0
    for start, end in a:
        cur = start
        while j < len(b) and b[j][1] <= cur:
            j += 1
        k = j
        while k < len(b) and b[k][0] < end:
            if b[k][0] > cur:
                out.append((cur, b[k][0]))
            cur = max(cur, b[k][1])
            k += 1
        if cur < end:
            out.append((cur, end))
    return out


def is_comm(name: str) -> bool:
    return "nccl" in name.lower()


def comm_time(events: list[dict]) -> CommTime:
    """Exposed and total communication time of the device events of one trace (Chrome trace event dicts)."""
    comm, other = [], []
    for e in events:
        if e.get("ph") != "X" or e.get("cat") not in DEVICE_CATEGORIES or "dur" not in e:
            continue
        span = (float(e["ts"]), float(e["ts"]) + float(e["dur"]))
        (comm if is_comm(str(e.get("name", ""))) else other).append(span)
    if not comm and not other:
        return CommTime(0.0, 0.0, 0.0)
    comm_u, other_u = _union(comm), _union(other)
    everything = _union(comm + other)
    return CommTime(_length(_subtract(comm_u, other_u)) / 1e3, _length(comm_u) / 1e3,
                    (everything[-1][1] - everything[0][0]) / 1e3)


def comm_time_of_trace(path: Path) -> CommTime:
    data = json.loads(Path(path).read_text())
    events = data["traceEvents"] if isinstance(data, dict) else data
    return comm_time(events)
