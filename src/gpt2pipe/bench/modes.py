"""The modes `gpt2pipe bench` times a training step in, and each one's default micro-batch per GPT-2 size.

Our kernels (bf16, fp8, with recompute, with the classifier's weight gradient summed in bf16, without the
fusions, with the bias gradients in the weight-gradient GEMMs), torch eager, the torch.compile recipes
(bench/compiled.py), the reference nanoGPT step (bench/nanogpt_ref.py) and llm.c (with --llmc). The
baselines, which the ratios are against, are nanogpt, the compile* modes and llm.c.
"""

from __future__ import annotations

from gpt2pipe import Gpt2pipeError
from gpt2pipe.bench import compiled
from gpt2pipe.model.gpt import GPT2_SIZES

KERNEL_MODES = ("kernels", "kernels-fp8", "kernels-fp8-qkv", "kernels-fp8-head", "kernels-recompute",
                "kernels-dw-bf16", "kernels-unfused", "kernels-bgrad")
# the GEMMs each fp8 mode runs in fp8: kernels-fp8 is what train.fp8 runs by default (train.fp8_gemms)
FP8_MODES = {"kernels-fp8": ("mlp",), "kernels-fp8-qkv": ("mlp", "qkv"), "kernels-fp8-head": ("mlp", "head")}
MODES = (*KERNEL_MODES, "eager", "nanogpt", *compiled.RECIPES)  # what --modes takes (and "llmc" with --llmc)
# compile-max last: it takes longest, and its CUDA-graph check compares it with compile (run before it)
DEFAULT_MODES = ("kernels", "kernels-fp8", "kernels-fp8-head", "kernels-unfused", "nanogpt", "compile",
                 "compile-max")
# micro-batch per size and mode family (kernels*, eager, compile*, llmc): what fits 80 GB with room to spare
# (a compiled mode that runs out of memory is recompiled at half the size, which costs minutes)
MICRO_BATCH = {
    "124M": {"kernels": 64, "kernels-recompute": 128, "eager": 32, "compile": 64, "llmc": 64},
    "350M": {"kernels": 64, "kernels-recompute": 128, "eager": 16, "compile": 32, "llmc": 64},
    "774M": {"kernels": 32, "kernels-recompute": 64, "eager": 8, "compile": 16, "llmc": 32},
    "1558M": {"kernels": 16, "kernels-recompute": 32, "eager": 4, "compile": 8, "llmc": 16},
}


def micro_batch_for(size: str, mode: str) -> int:
    """The default micro-batch of a mode at a GPT-2 size (other sizes: 124M's)."""
    table = MICRO_BATCH.get(size, MICRO_BATCH["124M"])
    family = mode if mode in table else "compile" if is_baseline(mode) else "kernels"  # nanogpt: compile's
    return table[family]


def is_baseline(mode: str) -> bool:
    return mode.startswith("compile") or mode in ("nanogpt", "llmc")


def parse_micro_batch(items: list[str]) -> dict[tuple[str | None, str], int]:
    """--micro-batch MODE=B (every size) or SIZE:MODE=B, e.g. `compile=32 350M:kernels=32`."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        size, colon, mode = key.rpartition(":")
        if not sep or not value.isdigit() or int(value) < 1 or (colon and not size):
            raise Gpt2pipeError(f"--micro-batch {item}: expected MODE=B or SIZE:MODE=B, e.g. kernels=32")
        if mode not in (*MODES, "llmc"):  # a typo would otherwise be ignored after minutes of GPU time
            raise Gpt2pipeError(f"--micro-batch {item}: unknown mode {mode!r}; choose from {', '.join((*MODES, 'llmc'))}")
        if size and size not in GPT2_SIZES:
            raise Gpt2pipeError(f"--micro-batch {item}: unknown size {size!r}; choose from {', '.join(GPT2_SIZES)}")
        out[(size or None, mode)] = int(value)
    return out
