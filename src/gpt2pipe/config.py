"""Typed run configuration, loaded from YAML and validated against the JSON schema (with its defaults).

The schema (schemas/config.schema.yaml) is the single source of truth for keys, types, defaults and
descriptions; the dataclasses below give the rest of the code typed attribute access.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from gpt2pipe import Gpt2pipeError

SCHEMA_PATH = resources.files("gpt2pipe") / "schemas" / "config.schema.yaml"


@dataclass(frozen=True)
class DataConfig:
    name: str
    source: str
    paths: list[str]
    text_separator: str | None
    hf_repo: str
    hf_subset: str
    hf_revision: str
    shard_tokens: int
    val_tokens: int | None
    max_tokens: int | None
    workers: int
    shuffle_documents: bool
    seed: int
    hf_dataset: str | None
    hf_config: str | None
    hf_split: str
    text_column: str


@dataclass(frozen=True)
class ModelConfig:
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 1024
    vocab_size: int = 50257
    padded_vocab_size: int = 50304


@dataclass(frozen=True)
class TrainConfig:
    seq_len: int
    micro_batch_size: int
    total_batch_tokens: int
    max_steps: int
    learning_rate: float
    warmup_steps: int
    final_lr_frac: float
    weight_decay: float
    beta1: float
    beta2: float
    eps: float
    grad_clip: float
    val_every: int
    checkpoint_every: int
    keep_states: int
    log_to: list[str]
    skip_update_lossz: float
    skip_update_gradz: float
    max_skipped_steps: int
    seed: int
    device: str
    dtype: str
    ops: str
    init_from: str | None
    recompute: bool
    fp8: bool
    stochastic_rounding: bool
    num_threads: int
    shuffle: bool

    def checkpoint_steps(self) -> list[int]:
        """Steps at which a model snapshot is written (and later evaluated); always includes the last."""
        steps = list(range(self.checkpoint_every, self.max_steps, self.checkpoint_every))
        return steps + [self.max_steps]


@dataclass(frozen=True)
class EvalConfig:
    val_tokens: int
    hellaswag: str
    hellaswag_max_examples: int | None
    batch_size: int
    samples: int
    sample_tokens: int
    sample_temperature: float
    sample_top_k: int
    sample_prompt: str


@dataclass(frozen=True)
class ReportConfig:
    log_scale: bool
    reference_log: str | None
    baseline: str


@dataclass(frozen=True)
class Config:
    run_name: str
    results_dir: str
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    eval: EvalConfig
    report: ReportConfig
    raw: dict = field(repr=False, compare=False, default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return Path(self.results_dir) / "data" / self.data.name

    @property
    def run_dir(self) -> Path:
        return Path(self.results_dir) / self.run_name

    def fingerprint(self, *sections: str) -> str:
        """Hash of the named config sections: a checkpoint only resumes under the same training setup."""
        return digest({s: self.raw[s] for s in sections})


# Keys that change how a run trains but not what it computes: a run resumes across changes to them (a
# different device, thread count, logging or checkpoint cadence, kernels vs torch path) — everything else in
# model/train/data decides the trained weights, so a saved state only resumes under the same values.
NOT_IDENTITY = {
    "data": {"workers", "name"},
    "train": {"device", "num_threads", "val_every", "checkpoint_every", "keep_states", "max_skipped_steps", "ops",
              "recompute", "log_to", "zero"},
}


def identity(raw: dict, *sections: str) -> dict:
    """The part of the named config sections that decides what a stage produces (NOT_IDENTITY removed)."""
    return {s: {k: v for k, v in raw[s].items() if k not in NOT_IDENTITY.get(s, set())} for s in sections}


def training_identity(raw: dict) -> dict:
    """What decides the trained weights: a saved training state resumes only under the same values."""
    return identity(raw, "model", "data", "train")


def data_identity(raw: dict) -> dict:
    """What decides a dataset's contents: data stages depend on this alone, so runs share datasets."""
    return identity(raw, "data")


def digest(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _schema() -> dict:
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


_Validator = _with_defaults(jsonschema.Draft7Validator)


class _Problem(Gpt2pipeError):
    """A config problem and the dotted keys it is about, so `load` can blame the --set that set them."""

    def __init__(self, message: str, keys: tuple[str, ...]):
        super().__init__(message)
        self.keys = keys


def _schema_problem(e: jsonschema.ValidationError) -> _Problem:
    where = ".".join(str(p) for p in e.absolute_path)
    keys: tuple[str, ...] = (where,) if where else ()
    if e.validator == "additionalProperties" and isinstance(e.instance, dict):
        known = e.schema.get("properties", {})
        keys = tuple(f"{where}.{k}" if where else k for k in e.instance if k not in known)
    return _Problem(f"{where or '(top level)'}: {e.message}", keys)


def _cross_field_problem(cfg: dict) -> _Problem | None:
    """The rules a schema cannot say; each message names the values, so the fix is obvious."""
    m, t = cfg["model"], cfg["train"]
    B, T, total = t["micro_batch_size"], t["seq_len"], t["total_batch_tokens"]
    checks = [
        (m["n_embd"] % m["n_head"] == 0,
         f"model.n_embd must be divisible by model.n_head ({m['n_embd']} % {m['n_head']} != 0)",
         ("model.n_embd", "model.n_head")),
        (m["padded_vocab_size"] >= m["vocab_size"],
         f"model.padded_vocab_size must be >= model.vocab_size ({m['padded_vocab_size']} < {m['vocab_size']})",
         ("model.padded_vocab_size", "model.vocab_size")),
        (t["seq_len"] <= m["block_size"],
         f"train.seq_len must be <= model.block_size ({t['seq_len']} > {m['block_size']})",
         ("train.seq_len", "model.block_size")),
        (total % (B * T) == 0,
         f"train.total_batch_tokens must be a multiple of train.micro_batch_size * train.seq_len "
         f"(total_batch_tokens {total}, micro_batch_size {B} * seq_len {T} = {B * T})",
         ("train.total_batch_tokens", "train.micro_batch_size", "train.seq_len")),
    ]
    for ok, msg, keys in checks:
        if not ok:
            return _Problem(msg, keys)
    return None


def _validated(raw: dict | None) -> dict:
    """A validated copy of `raw` with defaults filled in; raises _Problem (no source in its message)."""
    cfg = copy.deepcopy(raw) if raw else {}
    if not isinstance(cfg, dict):
        raise _Problem(f"a config must be a mapping, got {type(cfg).__name__}", ())
    errors = sorted(_Validator(_schema()).iter_errors(cfg), key=lambda e: list(e.path))
    if errors:
        raise _schema_problem(errors[0])
    problem = _cross_field_problem(cfg)
    if problem:
        raise problem
    return cfg


def validate(raw: dict | None, source: str = "config") -> dict:
    """Validate a config mapping, fill in defaults, and check cross-field rules. Returns a new dict."""
    try:
        return _validated(raw)
    except _Problem as p:
        raise Gpt2pipeError(f"{source}: {p}") from None


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
        raw=cfg,  # cfg["resources"] is Snakemake's alone: read there, not by the stages
    )


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise Gpt2pipeError(f"{path}: config file not found")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)  # where the parser gave up, as editors and compilers say it
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        context, start = getattr(e, "context", None), getattr(e, "context_mark", None)
        if context and start is not None:
            what += f" ({context} at {start.line + 1}:{start.column + 1})"
        raise Gpt2pipeError(f"{where}: not valid YAML: {what}") from None


def _apply_override(raw: dict, item: str) -> str:
    """Set one `section.key=value` (value parsed as YAML) in raw; returns the dotted key."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise Gpt2pipeError(f"--set {item}: expected section.key=value")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise Gpt2pipeError(f"--set {item}: value is not valid YAML: {getattr(e, 'problem', e)}") from None
    node = raw
    *parents, leaf = key.split(".")
    for depth, p in enumerate(parents):
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise Gpt2pipeError(f"--set {item}: {'.'.join(parents[: depth + 1])} is not a section")
    node[leaf] = parsed
    return key


def _related(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def load(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config file (None: all defaults) and apply `section.key=value` overrides.

    A problem is reported under the name of what caused it: `config.yaml:12:5:` for YAML syntax, the file for
    its own values, `--set section.key=value:` when the offending key was set on the command line."""
    raw: dict[str, Any] = {}
    source = "config"
    if path is not None:
        source = str(path)
        raw = _read_yaml(Path(path))
        if not isinstance(raw, dict):
            raise Gpt2pipeError(f"{source}: a config must be a mapping, got {type(raw).__name__}")
    applied = [(_apply_override(raw, item), item) for item in overrides or []]
    try:
        cfg = _validated(raw)
    except _Problem as p:
        blamed = [item for key, item in applied if any(_related(key, k) for k in p.keys)]
        raise Gpt2pipeError(f"{f'--set {blamed[-1]}' if blamed else source}: {p}") from None
    return _config(cfg)


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

    walk(_schema(), "")
    return "\n".join(lines)


def as_dict(obj) -> dict:
    return dataclasses.asdict(obj)
