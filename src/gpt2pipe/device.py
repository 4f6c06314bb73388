"""Where and how the model runs: device choice, autocast dtype, and peak FLOP/s for MFU."""

from __future__ import annotations

import contextlib

import torch

from gpt2pipe import Gpt2pipeError

# dense bf16 tensor-core peaks (FLOP/s), matched against torch.cuda.get_device_name()
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
}


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise Gpt2pipeError("train.device is 'cuda' but no CUDA GPU is available (use 'auto' or 'cpu')")
    return torch.device(name)


def autocast_dtype(device: torch.device, dtype: str = "auto") -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]


def sdpa_fastest_first():
    """SDPA's backends in the order measured fastest on the H100 (cuDNN 1.83 ms vs flash 2.45 ms for GPT-2
    124M's causal attention, fwd+bwd per layer; ../GPU-NOTES), the rest kept as fallbacks for shapes cuDNN
    does not take. torch's own default tries flash first."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    try:
        return sdpa_kernel(order, set_priority=True)
    except TypeError:  # torch < 2.6: no priorities, only the set
        return sdpa_kernel(order)


class autocast:
    """The `with` context of every forward pass: autocast to `dtype` (none for float32 or None) and, on CUDA,
    the fastest attention backend first — so training and evaluation run the attention the bench times.
    Reusable and re-entrant: each `with` enters a fresh context."""

    def __init__(self, device: torch.device, dtype: torch.dtype | None):
        self.device, self.dtype = device, dtype
        self._stacks: list[contextlib.ExitStack] = []  # one per open `with`: nesting the same instance works

    def __enter__(self):
        stack = contextlib.ExitStack()
        if self.dtype not in (None, torch.float32):
            stack.enter_context(torch.autocast(device_type=self.device.type, dtype=self.dtype))
        if self.device.type == "cuda":
            stack.enter_context(sdpa_fastest_first())
        self._stacks.append(stack)
        return self

    def __exit__(self, *exc):
        return self._stacks.pop().__exit__(*exc)


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
