"""The config schema (schemas/config.schema.yaml, the single source of truth for keys, types, defaults and
descriptions) and everything that checks a config against it: validation that fills in defaults, the
cross-field rules a schema cannot say, typing of strings that arrive from command lines, and `describe()`."""

from __future__ import annotations

import copy
import functools
import json
from importlib import resources

import yaml

from gpt2pipe import Gpt2pipeError

SCHEMA_PATH = resources.files("gpt2pipe") / "schemas" / "config.schema.yaml"


def schema() -> dict:
    """The config schema (JSON Schema as YAML): every key's type, default and description."""
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _with_defaults(validator_class):
    """Extend a jsonschema validator so that validating also fills in each property's default."""
    import jsonschema

    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


@functools.cache
def _validator():
    """The validator class, made on first use: jsonschema is imported only to validate a config, so the
    models and stages import (and dev scripts run on a bare GPU machine) without it."""
    import jsonschema

    return _with_defaults(jsonschema.Draft7Validator)


class Problem(Gpt2pipeError):
    """A config problem and the dotted keys it is about, so `load` can blame the --set that set them."""

    def __init__(self, message: str, keys: tuple[str, ...]):
        super().__init__(message)
        self.keys = keys


def _schema_problem(e) -> Problem:  # e: a jsonschema.ValidationError
    where = ".".join(str(p) for p in e.absolute_path)
    keys: tuple[str, ...] = (where,) if where else ()
    if e.validator == "additionalProperties" and isinstance(e.instance, dict):
        known = e.schema.get("properties", {})
        keys = tuple(f"{where}.{k}" if where else k for k in e.instance if k not in known)
    return Problem(f"{where or '(top level)'}: {e.message}", keys)


def _cross_field_problem(cfg: dict) -> Problem | None:
    """The rules a schema cannot say; each message names the values, so the fix is obvious."""
    from gpt2pipe.config import ModelConfig  # (config imports this module: imported on use)

    m, t = cfg["model"], cfg["train"]
    B, T, total = t["micro_batch_size"], t["seq_len"], t["total_batch_tokens"]
    if problem := ModelConfig(**m).problem(fp8=t["fp8"]):  # the model's own rules live beside ModelConfig
        return problem
    checks = [
        (t["seq_len"] <= m["block_size"],
         f"train.seq_len must be <= model.block_size ({t['seq_len']} > {m['block_size']})",
         ("train.seq_len", "model.block_size")),
        (total % (B * T) == 0,
         f"train.total_batch_tokens must be a multiple of train.micro_batch_size * train.seq_len "
         f"(total_batch_tokens {total}, micro_batch_size {B} * seq_len {T} = {B * T})",
         ("train.total_batch_tokens", "train.micro_batch_size", "train.seq_len")),
        (not (t.get("zero") == 3 and t["ops"] == "kernels"),
         "train.zero 3 shards the model through FSDP2, which runs on the torch path: set train.ops to torch or "
         "compile, or use train.zero 1 or 2 with ops kernels",
         ("train.zero", "train.ops")),
    ]
    if "rl" in cfg:
        checks += _rl_checks(cfg["rl"], m)
    checks += _reward_model_checks(cfg, m)
    for ok, msg, keys in checks:
        if not ok:
            return Problem(msg, keys)
    return None


def _rl_checks(rl: dict, m: dict) -> list:
    longest = rl["prompt_tokens"] + 1 + rl["max_new_tokens"]  # + the <|endoftext|> each prompt starts with
    return [
        (rl["algorithm"] != "grpo" or rl["batch_size"] % rl["grpo_group_size"] == 0,
         f"rl.batch_size must be a multiple of rl.grpo_group_size ({rl['batch_size']} % {rl['grpo_group_size']} != 0)",
         ("rl.batch_size", "rl.grpo_group_size")),
        (longest <= m["block_size"],
         f"rl.prompt_tokens + 1 + rl.max_new_tokens must fit model.block_size ({rl['prompt_tokens']} + 1 + "
         f"{rl['max_new_tokens']} > {m['block_size']})", ("rl.prompt_tokens", "rl.max_new_tokens")),
        (rl["mini_batch_size"] <= rl["batch_size"],
         f"rl.mini_batch_size must be <= rl.batch_size ({rl['mini_batch_size']} > {rl['batch_size']})",
         ("rl.mini_batch_size", "rl.batch_size")),
    ]


def _reward_model_checks(cfg: dict, m: dict) -> list:
    rl, rm = cfg.get("rl"), cfg.get("reward_model")
    checks = []
    if rl and (rl["reward"] == "reward_model" or rl["value_from_reward_model"]) and not rl["reward_model"]:
        checks.append((rm is not None, "rl.reward_model is null and the config has no reward_model section: add "
                       "`reward_model: {}` to train one, or set rl.reward_model to a trained model.pt",
                       ("rl.reward", "rl.reward_model", "rl.value_from_reward_model")))
    if rm is not None and rm["pairs"] == "sentiment":
        checks.append((rm["prompt_tokens"] + 1 + rm["response_tokens"] <= m["block_size"],
                       f"reward_model.prompt_tokens + 1 + reward_model.response_tokens must fit model.block_size "
                       f"({rm['prompt_tokens']} + 1 + {rm['response_tokens']} > {m['block_size']})",
                       ("reward_model.prompt_tokens", "reward_model.response_tokens")))
    return checks


def validated(raw: dict | None) -> dict:
    """A validated copy of `raw` with defaults filled in; raises Problem (no source in its message)."""
    cfg = copy.deepcopy(raw) if raw else {}
    if not isinstance(cfg, dict):
        raise Problem(f"a config must be a mapping, got {type(cfg).__name__}", ())
    errors = sorted(_validator()(schema()).iter_errors(cfg), key=lambda e: list(e.path))
    if errors:
        raise _schema_problem(errors[0])
    problem = _cross_field_problem(cfg)
    if problem:
        raise problem
    from gpt2pipe.config import with_sets  # (config imports this module: imported on use)

    return with_sets(cfg)


def describe() -> str:
    """Every config key with its default and description, for `gpt2pipe config --describe`."""
    lines: list[str] = []

    def walk(schema: dict, prefix: str) -> None:
        for name, sub in schema.get("properties", {}).items():
            key = f"{prefix}{name}"
            if sub.get("type") == "object":
                walk(sub, key + ".")
                continue
            lines.append(f"{key} = {json.dumps(sub.get('default'))}  # {sub.get('description', '')}".rstrip(" #"))

    walk(schema(), "")
    return "\n".join(lines)


def typed_strings(values, schema_node: dict):
    """Snakemake reads nested `--config` values with YAML's BaseLoader, so `--config 'train={max_steps: 100}'`
    gives the string "100": turn such strings back into the number, boolean or null the schema asks for."""
    if isinstance(values, dict):
        props = schema_node.get("properties", {})
        return {k: typed_strings(v, props.get(k, {})) for k, v in values.items()}
    types = schema_node.get("type", [])
    types = [types] if isinstance(types, str) else types
    if isinstance(values, str) and "string" not in types and "enum" not in schema_node:
        try:
            parsed = yaml.safe_load(values)
        except yaml.YAMLError:
            return values  # validation then names the key
        kinds = {"integer": int, "number": (int, float), "boolean": bool, "null": type(None)}
        if any(isinstance(parsed, kinds.get(t, ())) for t in types):
            return parsed
    return values
