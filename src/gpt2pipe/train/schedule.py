"""The learning-rate schedule: llm.c's linear warmup, then cosine decay to a fraction of the peak."""

from __future__ import annotations

import math

from gpt2pipe.config import TrainConfig


def lr_at(step: int, t: TrainConfig) -> float:
    """Linear warmup over warmup_steps, then cosine from learning_rate down to learning_rate * final_lr_frac."""
    if step < t.warmup_steps:
        return t.learning_rate * (step + 1) / t.warmup_steps
    span = max(1, t.max_steps - t.warmup_steps)
    ratio = min(1.0, (step - t.warmup_steps) / span)
    min_lr = t.learning_rate * t.final_lr_frac
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (t.learning_rate - min_lr)
