"""Loading a config: YAML files and `--set` overrides, validated into the typed Config, with every problem
named by the file or override that caused it and the dotted key it is about."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from gpt2pipe import Gpt2pipeError
from gpt2pipe.config.rules import validated
from gpt2pipe.config.sections import (Config, DataConfig, EvalConfig, ModelConfig, ReportConfig, RewardModelConfig,
                                      RLConfig, TrainConfig)
from gpt2pipe.schema import Problem, load_yaml


Layer = tuple[str, dict]  # (the name a problem is reported under, what it set), in the order merged


Check = Callable[[Config], Problem | None]  # a rule beyond the schema, e.g. that the corpus files exist


def validate(raw: dict | None, source: str = "config", layers: Sequence[Layer] = (),
             checks: tuple[Check, ...] = ()) -> dict:
    """Validate a config mapping, fill in defaults, and check cross-field rules and `checks`. Returns a new dict.

    A problem is reported under the last of `layers` (config files, overrides) that set one of its keys, else
    under `source`: one line, `my.yaml: train.learnng_rate: unknown key; did you mean train.learning_rate?`."""
    try:
        cfg = validated(raw)
        for check in checks:
            if problem := check(_config(cfg)):
                raise problem
    except Problem as p:
        raise Gpt2pipeError(f"{blame(p, layers, source)}: {p}") from None
    return cfg


def blame(problem: Problem, layers: Sequence[Layer], default: str) -> str:
    """The name of the last layer that set one of the problem's keys, else `default`."""
    setters = [name for name, values in layers
               if any(_related(k, key) for k in _leaves(values) for key in problem.keys)]
    return setters[-1] if setters else default


def _leaves(values, prefix: str = "") -> list[str]:
    """The dotted keys a mapping sets (its sections only where they are empty or not mappings)."""
    if not isinstance(values, dict) or (not values and prefix):
        return [prefix] if prefix else []
    return [leaf for k, v in values.items() for leaf in _leaves(v, f"{prefix}.{k}" if prefix else str(k))]


def _related(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def from_dict(raw: dict | None, source: str = "config") -> Config:
    return _config(validate(raw, source))


def _config(cfg: dict) -> Config:
    """The typed view of an already validated config."""
    return Config(
        run_name=cfg["run_name"],
        results_dir=cfg["results_dir"],
        data=DataConfig(**cfg["data"]),
        model=ModelConfig(**cfg["model"]),
        train=TrainConfig(**cfg["train"]),
        eval=EvalConfig(**cfg["eval"]),
        report=ReportConfig(**cfg["report"]),
        rl=RLConfig(**cfg["rl"]) if "rl" in cfg else None,
        reward_model=RewardModelConfig(**cfg["reward_model"]) if "reward_model" in cfg else None,
        raw=cfg,  # cfg["resources"] is Snakemake's alone: read there, not by the stages
    )


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise Gpt2pipeError(f"{path}: config file not found")
    try:
        return load_yaml(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)  # where the parser gave up, as editors and compilers say it
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        context, start = getattr(e, "context", None), getattr(e, "context_mark", None)
        if context and start is not None:
            what += f" ({context} at {start.line + 1}:{start.column + 1})"
        raise Gpt2pipeError(f"{where}: not valid YAML: {what}") from None


def _apply_override(raw: dict, item: str) -> dict:
    """Set one `section.key=value` (value parsed as YAML) in raw; returns what it set, as a mapping."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise Gpt2pipeError(f"--set {item}: expected section.key=value")
    try:
        parsed = load_yaml(value)
    except yaml.YAMLError as e:
        raise Gpt2pipeError(f"--set {item}: value is not valid YAML: {getattr(e, 'problem', e)}") from None
    node = raw
    *parents, leaf = key.split(".")
    for depth, p in enumerate(parents):
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise Gpt2pipeError(f"--set {item}: {'.'.join(parents[: depth + 1])} is not a section")
    node[leaf] = parsed
    layer = {leaf: parsed}
    for p in reversed(parents):
        layer = {p: layer}
    return layer


def load(path: str | Path | None, overrides: list[str] | None = None, checks: tuple[Check, ...] = ()) -> Config:
    """Load a YAML config file (None: all defaults) and apply `section.key=value` overrides; `checks` are
    further rules run on the result (e.g. that the corpus files exist), reported the same way.

    A problem is reported under the name of what caused it: `config.yaml:12:5:` for YAML syntax, the file for
    its own values, `--set section.key=value:` when the offending key was set on the command line."""
    raw: dict[str, Any] = {}
    source = "config"
    if path is not None:
        source = str(path)
        raw = _read_yaml(Path(path))
        if not isinstance(raw, dict):
            raise Gpt2pipeError(f"{source}: a config must be a mapping, got {type(raw).__name__}")
    layers = [(source, copy.deepcopy(raw))]
    layers += [(f"--set {item}", _apply_override(raw, item)) for item in overrides or []]
    return _config(validate(raw, source, layers, checks))
