"""Progress bars for a terminal, plain lines for a log file.

`from gpt2pipe.progress import tqdm` instead of tqdm's own: on a terminal it is tqdm; when its stream is not a
terminal (a Snakemake job's log, a batch job's output) it never redraws: it prints a plain line at each tenth
of the total (or once a minute without a total), so logs read as a list of lines, not as carriage returns.
"""

from __future__ import annotations

import sys

from tqdm import tqdm as _tqdm


def terminal(stream=None) -> bool:
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


class _Lines:
    """A stream for tqdm that writes each status as a line of its own, once (a refresh after tqdm.write or the
    close repeats the same count), and drops the blanks tqdm writes to clear a line."""

    def __init__(self, stream):
        self.stream, self.last = stream, None

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        count = line.split(" [")[0]  # the same count again (a refresh, or close at 100%): not a new line
        if line and count != self.last:
            self.stream.write(line + "\n")
            self.last = count

    def flush(self) -> None:
        self.stream.flush()


class tqdm(_tqdm):  # noqa: N801 (a drop-in for tqdm.tqdm)
    def __init__(self, iterable=None, *args, **kwargs):
        stream = kwargs.get("file") or sys.stderr
        if not kwargs.get("disable") and not terminal(stream):
            total = kwargs.get("total")
            if total is None and hasattr(iterable, "__len__"):
                total = len(iterable)
            shown = "{percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}" if total else "{n_fmt} [{elapsed}"
            kwargs.update(file=_Lines(stream), dynamic_ncols=False, mininterval=0 if total else 60,
                          miniters=max(1, total // 10) if total else 1,
                          bar_format="{desc}: " + shown + ", {rate_fmt}{postfix}]")
        super().__init__(iterable, *args, **kwargs)
