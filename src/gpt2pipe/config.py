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


def validate(raw: dict | None, source: str = "config") -> dict:
    """Validate a config mapping, fill in defaults, and check cross-field rules. Returns a new dict."""
    cfg = copy.deepcopy(raw) if raw else {}
    if not isinstance(cfg, dict):
        raise Gpt2pipeError(f"{source}: a config must be a mapping, got {type(cfg).__name__}")
    errors = sorted(_Validator(_schema()).iter_errors(cfg), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        where = ".".join(str(p) for p in e.absolute_path) or "(top level)"
        raise Gpt2pipeError(f"{source}: {where}: {e.message}")
    m, t = cfg["model"], cfg["train"]
    checks = [
        (m["n_embd"] % m["n_head"] == 0, "model.n_embd must be divisible by model.n_head"),
        (m["padded_vocab_size"] >= m["vocab_size"], "model.padded_vocab_size must be >= model.vocab_size"),
        (t["seq_len"] <= m["block_size"], "train.seq_len must be <= model.block_size"),
        (t["total_batch_tokens"] % (t["micro_batch_size"] * t["seq_len"]) == 0,
         "train.total_batch_tokens must be a multiple of train.micro_batch_size * train.seq_len"),
    ]
    for ok, msg in checks:
        if not ok:
            raise Gpt2pipeError(f"{source}: {msg}")
    return cfg


def from_dict(raw: dict | None, source: str = "config") -> Config:
    cfg = validate(raw, source)
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


def load(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config file (None: all defaults) and apply `section.key=value` overrides."""
    raw: dict[str, Any] = {}
    source = "config"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise Gpt2pipeError(f"{path}: config file not found")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise Gpt2pipeError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise Gpt2pipeError(f"override {item!r}: expected section.key=value")
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return from_dict(raw, source)


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
