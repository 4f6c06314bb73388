"""Typed run configuration, loaded from YAML and validated against the JSON schema (with its defaults).

The schema (schemas/config.schema.yaml) is the single source of truth for keys, types, defaults and
descriptions; the dataclasses below give the rest of the code typed attribute access.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gpt2pipe import Gpt2pipeError
from gpt2pipe.schema import Problem, schema, validated


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
    # architecture options (ARCH_KEYS); the defaults are GPT-2's, so older configs and checkpoints load unchanged
    pos_embedding: str = "learned"
    rope_theta: float = 10000.0
    norm: str = "layernorm"
    mlp: str = "gelu"
    mlp_hidden: int | None = None
    qk_norm: bool = False
    n_kv_head: int | None = None
    tie_embeddings: bool = True
    bias: bool = True

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def hidden(self) -> int:
        """The MLP's hidden width: mlp_hidden, else 4 * n_embd, or for SwiGLU LLaMA's 8/3 * n_embd rounded up
        to a multiple of 64 (two hidden matrices instead of one at about the same parameter count)."""
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        if self.mlp == "swiglu":
            return -(-8 * self.n_embd // 192) * 64  # ceil(8/3 * n_embd / 64) * 64
        return 4 * self.n_embd

    def arch_changes(self) -> dict:
        """The architecture options that make this model differ from GPT-2 ({} for GPT-2), judged by their
        effect: n_kv_head = n_head and the activation's default mlp_hidden spelled out change nothing, and
        rope_theta matters only with rotary positions."""
        def differs(k: str) -> bool:
            if k == "n_kv_head":
                return self.kv_heads != self.n_head
            if k == "mlp_hidden":  # against the activation's own default width
                return self.hidden != dataclasses.replace(self, mlp_hidden=None).hidden
            if k == "rope_theta":
                return self.pos_embedding == "rope" and self.rope_theta != _GPT2_ARCH[k]
            return getattr(self, k) != _GPT2_ARCH[k]

        return {k: getattr(self, k) for k in ARCH_KEYS if differs(k)}

    def resolved(self) -> ModelConfig:
        """The same model with n_kv_head and mlp_hidden spelled out: equal for equal shapes."""
        return dataclasses.replace(self, n_kv_head=self.kv_heads, mlp_hidden=self.hidden)

    def problem(self, fp8: bool = False) -> Problem | None:
        """The first rule this shape breaks, in one line (the schema cannot say these), or None."""
        H, G = self.n_head, self.kv_heads
        # a config read from a checkpoint has not been through the schema: its option values are checked here
        enums = {k: schema()["properties"]["model"]["properties"][k]["enum"] for k in ("pos_embedding", "norm", "mlp")}
        checks = [(getattr(self, k) in allowed, f"model.{k}: {getattr(self, k)!r} is not one of {allowed}", (f"model.{k}",))
                  for k, allowed in enums.items()]
        checks += [
            (self.n_embd % H == 0, f"model.n_embd must be divisible by model.n_head ({self.n_embd} % {H} != 0)",
             ("model.n_embd", "model.n_head")),
            (H % G == 0, f"model.n_head must be divisible by model.n_kv_head ({H} % {G} != 0)",
             ("model.n_head", "model.n_kv_head")),
            (self.pos_embedding != "rope" or self.head_dim % 2 == 0,
             f"model.pos_embedding rope rotates pairs of channels: the head dimension n_embd / n_head must be even "
             f"(got {self.n_embd} / {H} = {self.n_embd / H:g})", ("model.pos_embedding", "model.n_embd", "model.n_head")),
            (self.padded_vocab_size >= self.vocab_size,
             f"model.padded_vocab_size must be >= model.vocab_size ({self.padded_vocab_size} < {self.vocab_size})",
             ("model.padded_vocab_size", "model.vocab_size")),
            (not (fp8 and self.arch_changes()),
             f"train.fp8 runs GPT-2's LayerNorm/GELU blocks only, not model "
             f"{', '.join(f'{k} {v}' for k, v in self.arch_changes().items())}: set train.fp8 false",
             ("train.fp8", *(f"model.{k}" for k in self.arch_changes()))),
        ]
        return next((Problem(msg, keys) for ok, msg, keys in checks if not ok), None)


ARCH_KEYS = ("pos_embedding", "rope_theta", "norm", "mlp", "mlp_hidden", "qk_norm", "n_kv_head", "tie_embeddings",
             "bias")
_GPT2_ARCH = {k: getattr(ModelConfig, k) for k in ARCH_KEYS}


def checkpoint_steps(every: int, last: int) -> list[int]:
    """every, 2 x every, ... below last, and last itself."""
    return [*range(every, last, every), last]


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
    zero: int = 1
    lr_schedule: str = "cosine"
    cooldown_frac: float = 0.4
    optimizer: str = "adamw"
    muon_learning_rate: float = 0.02
    muon_momentum: float = 0.95
    muon_weight_decay: float = 0.0
    document_aligned: bool = False
    fp8_gemms: tuple[str, ...] = ("mlp",)

    def checkpoint_steps(self) -> list[int]:
        """Steps at which a model snapshot is written (and later evaluated); always includes the last."""
        return checkpoint_steps(self.checkpoint_every, self.max_steps)


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
    compare_runs: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RLConfig:
    """The rl section, validated (the schema holds every default and description)."""
    algorithm: str
    init_from: str | None
    reward: str
    prompts: str | None
    prompt_tokens: int
    num_prompts: int
    eval_prompts: int
    steps: int
    batch_size: int
    mini_batch_size: int
    forward_batch: int
    max_new_tokens: int
    temperature: float
    learning_rate: float
    adam_eps: float
    weight_decay: float
    grad_clip: float
    kl_coef: float
    kl_target: float | None
    kl_horizon: int
    gamma: float
    lam: float
    cliprange: float
    cliprange_value: float
    vf_coef: float
    ppo_epochs: int
    whiten_rewards: bool
    missing_eos_penalty: float | None
    grpo_group_size: int
    grpo_beta: float
    grpo_iterations: int
    checkpoint_every: int
    seed: int
    reward_model: str | None = None  # rl.reward reward_model: its file (None: the run's reward_model stage's)
    value_from_reward_model: bool = False

    def checkpoint_steps(self) -> list[int]:
        return checkpoint_steps(self.checkpoint_every, self.steps)


@dataclass(frozen=True)
class RewardModelConfig:
    """The reward_model section, validated (the schema holds every default and description)."""
    init_from: str | None
    pairs: str
    num_prompts: int
    pairs_per_prompt: int
    prompt_tokens: int
    response_tokens: int
    temperature: float
    margin: float
    eval_pairs: int
    epochs: int
    batch_size: int
    forward_batch: int
    learning_rate: float
    weight_decay: float
    grad_clip: float
    max_tokens: int
    normalize: bool
    seed: int


@dataclass(frozen=True)
class Config:
    run_name: str
    results_dir: str
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    eval: EvalConfig
    report: ReportConfig
    rl: RLConfig | None = None  # None: no rl section, no RL stage
    reward_model: RewardModelConfig | None = None  # None: no reward_model section, no reward-model stage
    raw: dict = field(repr=False, compare=False, default_factory=dict)

    @property
    def data_dir(self) -> Path:
        from gpt2pipe import layout  # (layout reads config's identity functions: imported on use)

        return layout.data_dir(self.raw)

    @property
    def run_dir(self) -> Path:
        from gpt2pipe import layout

        return layout.run_dir(self.raw)

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


# train keys added after runs existed, at the value that trains as before them: left out of the identity there,
# so those runs' saved states and workflow fingerprints stay valid. (fp8_gemms' default is now [mlp]: a state
# saved before the key existed trained mlp + qkv, and resuming it under the new default is refused by name.)
LATER_TRAIN_KEYS = {"optimizer": "adamw", "lr_schedule": "cosine", "document_aligned": False,
                    "fp8_gemms": ["mlp", "qkv"]}


# list keys whose order means nothing (sets): held sorted from validation on, so [qkv, mlp] and [mlp, qkv] are
# one run to the identity, the stage configs and the workflow's fingerprints (states saved before kept the
# config's order: their identities are sorted when compared, with_sets)
SET_KEYS = {"train": ("fp8_gemms",)}


def with_sets(sections: dict) -> dict:
    """`sections` (a config or an identity) with the lists of SET_KEYS sorted."""
    return {s: {k: sorted(v) if k in SET_KEYS.get(s, ()) and isinstance(v, list) else v for k, v in values.items()}
            if isinstance(values, dict) else values for s, values in sections.items()}


def _unused(section: str, key: str, values: dict) -> bool:
    """Keys that cannot change the weights under the section's other values (in the identity they would make
    equal runs differ): Muon's settings without Muon, the cooldown without the wsd schedule."""
    if section != "train":
        return False
    if key.startswith("muon_"):
        return values.get("optimizer") != "muon"
    if key == "cooldown_frac":
        return values.get("lr_schedule") != "wsd"
    if key == "fp8_gemms" and not values.get("fp8"):
        return True
    return key in LATER_TRAIN_KEYS and values[key] == LATER_TRAIN_KEYS[key]


def identity(raw: dict, *sections: str) -> dict:
    """The part of the named config sections that decides what a stage produces (NOT_IDENTITY removed).
    Model architecture options count only where they change the model (arch_changes: GPT-2's values, spelled
    out or not, are left out), and train keys only where they can act (_unused), so states and workflow
    fingerprints made before those keys existed stay valid and equal runs have equal identities."""
    out, raw = {}, with_sets({s: raw[s] for s in sections})
    for s in sections:
        values = raw[s]
        arch = ModelConfig(**values).arch_changes() if s == "model" else {}
        out[s] = {k: v for k, v in values.items() if k not in NOT_IDENTITY.get(s, set())
                  and not (s == "model" and k in ARCH_KEYS and k not in arch) and not _unused(s, k, values)}
    return out


def training_identity(raw: dict) -> dict:
    """What decides the trained weights: a saved training state resumes only under the same values."""
    return identity(raw, "model", "data", "train")


def data_identity(raw: dict) -> dict:
    """What decides a dataset's contents: data stages depend on this alone, so runs share datasets."""
    return identity(raw, "data")


def digest(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def validate(raw: dict | None, source: str = "config") -> dict:
    """Validate a config mapping, fill in defaults, and check cross-field rules. Returns a new dict."""
    try:
        return validated(raw)
    except Problem as p:
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
        rl=RLConfig(**cfg["rl"]) if "rl" in cfg else None,
        reward_model=RewardModelConfig(**cfg["reward_model"]) if "reward_model" in cfg else None,
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
        cfg = validated(raw)
    except Problem as p:
        blamed = [item for key, item in applied if any(_related(key, k) for k in p.keys)]
        raise Gpt2pipeError(f"{f'--set {blamed[-1]}' if blamed else source}: {p}") from None
    return _config(cfg)


def as_dict(obj) -> dict:
    return dataclasses.asdict(obj)
