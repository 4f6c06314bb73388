"""The learning-rate schedule: linear warmup, then llm.c's cosine decay or modded-nanogpt's
warmup-stable-decay (constant, then a linear cooldown), both down to a fraction of the peak."""

from __future__ import annotations

import math

from gpt2pipe.config import TrainConfig


def lr_at(step: int, t: TrainConfig) -> float:
    """Linear warmup over warmup_steps, then train.lr_schedule from learning_rate down to
    learning_rate * final_lr_frac at max_steps. Muon's rate is this times muon_learning_rate / learning_rate."""
    if step < t.warmup_steps:
        return t.learning_rate * (step + 1) / t.warmup_steps
    min_lr = t.learning_rate * t.final_lr_frac
    if t.lr_schedule == "wsd":
        # modded-nanogpt's get_lr: full rate while more than cooldown_frac of the run is left, then linear
        left = (t.max_steps - step) / t.max_steps
        if left >= t.cooldown_frac:
            return t.learning_rate
        w = max(0.0, left) / t.cooldown_frac
        return min_lr + w * (t.learning_rate - min_lr)
    span = max(1, t.max_steps - t.warmup_steps)
    ratio = min(1.0, (step - t.warmup_steps) / span)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (t.learning_rate - min_lr)
