"""Typed run configuration, loaded from YAML and validated against the JSON schema (with its defaults).

The schema (gpt2pipe/schemas/config.schema.yaml, read by gpt2pipe.schema) is the single source of truth for
keys, types, defaults and descriptions. This package, from the ground up:

    model.py        ModelConfig: the model section and the shape rules a schema cannot say
    fingerprint.py  what decides a run's weights or a dataset's contents (identity), and its digest
    sections.py     one dataclass per section, and Config holding them
    rules.py        validation: the schema, then the cross-field rules
    loading.py      YAML files and --set overrides -> Config, each problem named by its file (or --set) and key

`from gpt2pipe.config import ...` is the public way in; the modules are how it is kept.
"""

from gpt2pipe.config.fingerprint import (LATER_TRAIN_KEYS, NOT_IDENTITY, SET_KEYS, data_identity, digest,
                                         identity, training_identity, with_sets)
from gpt2pipe.config.loading import blame, from_dict, load, validate
from gpt2pipe.config.model import ARCH_KEYS, ModelConfig
from gpt2pipe.config.sections import (Config, DataConfig, EvalConfig, ReportConfig, RewardModelConfig, RLConfig,
                                      TrainConfig, checkpoint_steps)

__all__ = ["ARCH_KEYS", "LATER_TRAIN_KEYS", "NOT_IDENTITY", "SET_KEYS", "Config", "DataConfig", "EvalConfig",
           "ModelConfig", "RLConfig", "RewardModelConfig", "ReportConfig", "TrainConfig", "blame", "checkpoint_steps", "data_identity",
           "digest", "from_dict", "identity", "load", "training_identity", "validate", "with_sets"]
