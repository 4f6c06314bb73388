"""The tensor names and shapes of our GPT, which every foreign model file is checked against before use."""

from __future__ import annotations

import torch

from gpt2pipe import Gpt2pipeError
from gpt2pipe.config import ModelConfig
from gpt2pipe.model.gpt import GPT


def padded(vocab_size: int, multiple: int = 128) -> int:
    """llm.c's padded vocabulary (50257 -> 50304): a multiple of 128 keeps the classifier GEMM aligned."""
    return (vocab_size + multiple - 1) // multiple * multiple


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every state-dict tensor of a GPT with this config, by name, with its shape."""
    with torch.device("meta"):  # shapes only: no memory, no init time even for 1558M
        model = GPT(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_state(source: str, state: dict[str, torch.Tensor], cfg: ModelConfig) -> None:
    """One line naming the first missing tensor or wrong shape, so a foreign file fails before loading."""
    expected = expected_shapes(cfg)
    missing = sorted(set(expected) - set(state))
    if missing:
        raise Gpt2pipeError(f"{source}: missing tensors {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    for k, shape in expected.items():
        if tuple(state[k].shape) != shape:
            raise Gpt2pipeError(f"{source}: {k} has shape {tuple(state[k].shape)}, expected {shape}")
