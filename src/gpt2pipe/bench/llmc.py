"""`gpt2pipe bench --llmc PATH`: llm.c's `train_gpt2cu` on the same shape, as one more baseline.

llm.c reads real shards only (-i/-j), so the bench writes a small pair of random-token shards in llm.c's
format (data/llmc_format.py) into a temporary folder, runs the binary for warm-up + timed steps from a fresh
GPT-2 (`-e d12` for 124M, d24, d36, d48) with evaluation, sampling, HellaSwag and checkpoints off and without
GELU recompute (`-r 0`), and reads its per-step lines:

    step    5/10 | loss 7.123456 (+0.00z)| norm 1.2345 (+0.00z)| lr 6.00e-04 | 968.91 ms | 43.1% bf16 MFU | ...

The step time is the median over the steps after the warm-up (llm.c times each step with CUDA events around
the micro-batches and the update, as our bench times a whole step). Peak memory is llm.c's own
`device memory usage` line (cudaMemGetInfo after it allocated everything: includes the CUDA context, so it
reads a little higher than torch's max_memory_allocated of the other rows).
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gpt2pipe import Gpt2pipeError
from gpt2pipe.data.llmc_format import write_shard

DEPTH = {"124M": "d12", "350M": "d24", "774M": "d36", "1558M": "d48"}  # llm.c's model descriptors
STEP_LINE = re.compile(r"^step\s+(\d+)/(\d+)\s*\|\s*loss\s+(\S+).*?\|\s*norm\s+(\S+).*?\|\s*([0-9.]+)\s*ms\s*\|",
                       re.MULTILINE)
MEMORY_LINE = re.compile(r"device memory usage:\s*(\d+)\s*MiB")
OUT_OF_MEMORY = re.compile(r"out of memory|cudaErrorMemoryAllocation", re.IGNORECASE)
TIMEOUT_S = 900


@dataclass
class LlmcRun:
    step_ms: list[float] = field(default_factory=list)   # every step llm.c printed, in order
    losses: list[float] = field(default_factory=list)
    norms: list[float] = field(default_factory=list)
    memory_mib: int | None = None


class LlmcFailed(Gpt2pipeError):
    """train_gpt2cu failed; out_of_memory: its output says so (the bench then halves the micro-batch)."""

    def __init__(self, message: str, out_of_memory: bool) -> None:
        super().__init__(message)
        self.out_of_memory = out_of_memory


def parse(stdout: str) -> LlmcRun:
    """The step lines and the memory line of a train_gpt2cu run."""
    run = LlmcRun()
    for m in STEP_LINE.finditer(stdout):
        run.losses.append(float(m.group(3)))
        run.norms.append(float(m.group(4)))
        run.step_ms.append(float(m.group(5)))
    mem = MEMORY_LINE.search(stdout)
    run.memory_mib = int(mem.group(1)) if mem else None
    return run


def write_shards(folder: Path, micro_batch: int, seq_len: int, total_batch: int, vocab_size: int,
                 seed: int = 0) -> tuple[str, str]:
    """A train and a val shard of uniform random tokens, as llm.c's -i/-j patterns. Train holds one whole
    step's windows (llm.c reloads a shard when it runs out), val one micro-batch."""
    rng = np.random.default_rng(seed)
    train = folder / "bench_train_000001.bin"
    val = folder / "bench_val_000000.bin"
    write_shard(train, rng.integers(0, vocab_size, max(total_batch, micro_batch * seq_len) + 1, dtype=np.uint16))
    write_shard(val, rng.integers(0, vocab_size, micro_batch * seq_len + 1, dtype=np.uint16))
    return str(train), str(val)


def command(binary: Path, size: str, micro_batch: int, seq_len: int, total_batch: int, steps: int,
            train: str, val: str, extra: list[str]) -> list[str]:
    """The train_gpt2cu command line: a fresh model of `size`, only training steps (validation once at the
    start and end on one batch, which llm.c always does; no sampling, HellaSwag, checkpoints or log dir),
    without recomputing GELU in backward (`-r 0`: llm.c's default -r 1 saves memory "but less speed", and the
    baseline should be llm.c at its fastest; `extra` comes last, so a -r there wins)."""
    if size not in DEPTH:
        raise Gpt2pipeError(f"--llmc: no llm.c model for size {size} (llm.c has {', '.join(DEPTH)})")
    return [str(binary), "-i", train, "-j", val, "-e", DEPTH[size], "-b", str(micro_batch), "-t", str(seq_len),
            "-d", str(total_batch), "-x", str(steps), "-v", str(1_000_000), "-m", "1", "-s", "0", "-h", "0",
            "-n", "0", "-y", "0", "-r", "0", *extra]


def run(binary: str | Path, size: str, micro_batch: int, seq_len: int, total_batch: int, steps: int, warmup: int,
        vocab_size: int = 50257, extra: list[str] = (), timeout_s: int = TIMEOUT_S) -> tuple[LlmcRun, str]:
    """Run train_gpt2cu for warmup + steps steps; (parsed run, its output). Raises Gpt2pipeError when it
    fails or prints fewer step lines than asked for."""
    binary = Path(binary).resolve()
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise Gpt2pipeError(f"--llmc {binary}: not an executable file (build llm.c's train_gpt2cu first)")
    with tempfile.TemporaryDirectory(prefix="gpt2pipe-llmc-") as tmp:
        train, val = write_shards(Path(tmp), micro_batch, seq_len, total_batch, vocab_size)
        cmd = command(binary, size, micro_batch, seq_len, total_batch, warmup + steps, train, val, list(extra))
        print("+ " + " ".join(cmd), flush=True)
        try:  # in llm.c's folder: where it looks for its tokenizer and writes nothing
            proc = subprocess.run(cmd, cwd=binary.parent, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as e:
            raise Gpt2pipeError(f"llm.c did not finish in {timeout_s} s") from e
    out = proc.stdout + proc.stderr
    parsed = parse(proc.stdout)
    if proc.returncode != 0 or len(parsed.step_ms) < warmup + steps:
        tail = "\n".join(out.strip().splitlines()[-15:])
        kind = "out of memory" if OUT_OF_MEMORY.search(out) else f"exit status {proc.returncode}"
        raise LlmcFailed(f"llm.c failed ({kind}, {len(parsed.step_ms)} step lines):\n{tail}",
                         bool(OUT_OF_MEMORY.search(out)))
    return parsed, out


def median_ms(parsed: LlmcRun, warmup: int) -> float:
    """Median step time after the first `warmup` steps (llm.c's first step includes cuBLAS/cuDNN set-up)."""
    timed = parsed.step_ms[warmup:]
    if not timed:
        raise Gpt2pipeError("llm.c printed no timed step")
    return statistics.median(timed)
