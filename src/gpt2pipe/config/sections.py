"""The typed view of a validated config: one frozen dataclass per section, and Config holding them.

The schema (schemas/config.schema.yaml) is the single source of truth for keys, types, defaults and
descriptions; these dataclasses give the rest of the code typed attribute access.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gpt2pipe.config.fingerprint import digest
from gpt2pipe.config.model import ModelConfig


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
    fp8_gradients: str = "e4m3"

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

    # The folders layout.data_dir / layout.run_dir name (tested equal): layout builds on config, so config
    # does not import it back.
    @property
    def data_dir(self) -> Path:
        return Path(self.results_dir) / "data" / self.data.name

    @property
    def run_dir(self) -> Path:
        return Path(self.results_dir) / self.run_name

    def fingerprint(self, *sections: str) -> str:
        """Hash of the named config sections: a checkpoint only resumes under the same training setup."""
        return digest({s: self.raw[s] for s in sections})
