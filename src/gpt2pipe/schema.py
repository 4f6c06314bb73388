"""The config schema (schemas/config.schema.yaml, the single source of truth for keys, types, defaults and
descriptions): a validator that fills in defaults, the Problem a config error is raised as, typing of strings
that arrive from command lines, and `describe()`. The ground floor of config handling: it imports no other
gpt2pipe module but the package (gpt2pipe.config.rules applies it, with the cross-field rules)."""

from __future__ import annotations

import copy
import difflib
import json
import re
from importlib import resources

import jsonschema
import yaml

from gpt2pipe import Gpt2pipeError

SCHEMA_PATH = resources.files("gpt2pipe") / "schemas" / "config.schema.yaml"


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats: `1e-5` and `3E4` are numbers (YAML 1.1, PyYAML's default,
    reads them as strings, and `learning_rate: 1e-5` would be refused as "not of type number")."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def load_yaml(text: str):
    """Parse YAML text (safe: plain data only) with YAML 1.2's numbers."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


def schema() -> dict:
    """The config schema (JSON Schema as YAML): every key's type, default and description."""
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _with_defaults(validator_class):
    """Extend a jsonschema validator so that validating also fills in each property's default."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


Validator = _with_defaults(jsonschema.Draft7Validator)


class Problem(Gpt2pipeError):
    """A config problem and the dotted keys it is about, so `load` can blame the --set that set them."""

    def __init__(self, message: str, keys: tuple[str, ...]):
        super().__init__(message)
        self.keys = keys


def _dotted(prefix: str, key) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _nearest(word: str, choices) -> str | None:
    """The choice a misspelt `word` most likely meant (difflib's ratio >= 0.6), or None."""
    found = difflib.get_close_matches(word, [str(c) for c in choices], n=1)
    return found[0] if found else None


def _elsewhere(key: str, tree: dict, prefix: str = "") -> str | None:
    """The dotted key of another section with this exact name (train.n_layer -> model.n_layer), or None."""
    for name, sub in tree.get("properties", {}).items():
        if name == key and prefix:
            return _dotted(prefix, name)
        if sub.get("type") == "object" and (found := _elsewhere(key, sub, _dotted(prefix, name))):
            return found
    return None


def _unknown_key(where: str, key, known: dict) -> str:
    """`train.learnng_rate: unknown key; did you mean train.learning_rate?`"""
    guess = _nearest(str(key), known)
    guess = _dotted(where, guess) if guess else _elsewhere(str(key), schema())
    return f"{_dotted(where, key)}: unknown key" + (f"; did you mean {guess}?" if guess else "")


def schema_problem(e: jsonschema.ValidationError) -> Problem:
    """One line naming the dotted key (jsonschema's message names only the section for an unknown key)."""
    where = ".".join(str(p) for p in e.absolute_path)
    if e.validator == "additionalProperties" and isinstance(e.instance, dict):
        known = e.schema.get("properties", {})
        unknown = [k for k in e.instance if k not in known]
        return Problem("; ".join(_unknown_key(where, k, known) for k in unknown),
                       tuple(_dotted(where, k) for k in unknown))
    message = f"{where or '(top level)'}: {e.message}"
    if e.validator == "enum" and isinstance(e.instance, str) and (guess := _nearest(e.instance, e.validator_value)):
        message += f"; did you mean {guess!r}?"
    return Problem(message, (where,) if where else ())


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
            parsed = load_yaml(values)
        except yaml.YAMLError:
            return values  # validation then names the key
        kinds = {"integer": int, "number": (int, float), "boolean": bool, "null": type(None)}
        if any(isinstance(parsed, kinds.get(t, ())) for t in types):
            return parsed
    return values
