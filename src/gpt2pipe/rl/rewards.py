"""Reward functions: batches of (prompt, response) texts in, one float per response out.

- `sentiment`: VADER's compound score of the response (-1 .. 1; the vaderSentiment lexicon, nothing to
  download): lm-human-preferences' sentiment task with a lexicon instead of human labels.
- `reward_model`: the score of a reward model trained by `gpt2pipe reward-model` (reward_model/model.py's
  Scorer: moved to the stage's device by the loop, scores normalised on its training prompts' responses).
- `module:function` or `path/to/file.py:function`: a Python function of the user's, imported from the working
  directory (the workflow's folder) and called as function(prompts, responses). It is the user's own code and
  it runs with the user's rights: only name functions you trust.

Whatever a function returns is checked (one finite number per response); a function that raises or returns
anything else ends the stage with one line that names it.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from gpt2pipe import Gpt2pipeError

RewardFn = Callable[[list[str], list[str]], Sequence[float]]


def sentiment() -> RewardFn:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()

    def score(prompts: list[str], responses: list[str]) -> list[float]:
        return [analyzer.polarity_scores(r)["compound"] for r in responses]

    return score


def user_function(spec: str) -> RewardFn:
    """The function `module:function` (importable from the working directory) or `file.py:function`."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise Gpt2pipeError(f"rl.reward {spec!r}: expected 'sentiment', 'reward_model', 'module:function' or 'file.py:function'")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise Gpt2pipeError(f"rl.reward {spec}: {path} not found")
            loaded = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(loaded)
            loaded.loader.exec_module(module)
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))
            module = importlib.import_module(module_name)
    except Gpt2pipeError:
        raise
    except Exception as e:  # the user's module failed to import: say so in one line
        raise Gpt2pipeError(f"rl.reward {spec}: importing {module_name} failed: {type(e).__name__}: {e}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise Gpt2pipeError(f"rl.reward {spec}: {module_name} has no function {attr}")
    return fn


def build(spec: str, reward_model: str | Path | None = None) -> RewardFn:
    """The reward function `spec` names; `reward_model` is the model file of spec 'reward_model'."""
    if spec == "reward_model":
        from gpt2pipe.reward_model.model import Scorer

        return Scorer(reward_model)
    return sentiment() if spec == "sentiment" else user_function(spec)


def score(fn: RewardFn, spec: str, prompts: list[str], responses: list[str]) -> torch.Tensor:
    """fn's rewards as a float32 tensor, checked: one finite number per response."""
    try:
        out = fn(list(prompts), list(responses))
    except Exception as e:
        raise Gpt2pipeError(f"rl.reward {spec} raised {type(e).__name__}: {e}") from None
    try:
        values = [float(v) for v in (out.tolist() if hasattr(out, "tolist") else out)]
    except (TypeError, ValueError):
        raise Gpt2pipeError(f"rl.reward {spec} returned {type(out).__name__}, not a sequence of numbers") from None
    if len(values) != len(responses):
        raise Gpt2pipeError(f"rl.reward {spec} returned {len(values)} values for {len(responses)} responses")
    if (bad := next((i for i, v in enumerate(values) if not math.isfinite(v)), None)) is not None:
        raise Gpt2pipeError(f"rl.reward {spec} returned {values[bad]} for response {bad} ({responses[bad][:60]!r})")
    return torch.tensor(values, dtype=torch.float32)
