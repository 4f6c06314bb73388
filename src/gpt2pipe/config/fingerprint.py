"""What decides a run's output: the identity of a training run or a dataset, and its fingerprint (digest).

A saved training state resumes only under the same training identity, and the workflow reruns a stage when
its fingerprint changes; keys that change how a run trains but not what it computes are left out."""

from __future__ import annotations

import hashlib
import json

from gpt2pipe.config.model import ARCH_KEYS, ModelConfig

# Keys that change how a run trains but not what it computes: a run resumes across changes to them (a
# different device, thread count, logging or checkpoint cadence, kernels vs torch path) — everything else in
# model/train/data decides the trained weights, so a saved state only resumes under the same values.
NOT_IDENTITY = {
    "data": {"workers", "name"},
    "train": {"device", "num_threads", "val_every", "checkpoint_every", "keep_states", "max_skipped_steps", "ops",
              "recompute", "log_to", "zero"},
}


# train keys added after runs existed, at the value that trains as before them: left out of the identity there,
# so those runs' saved states and workflow fingerprints stay valid. (fp8_gemms' default is now [mlp] and
# fp8_gradients' e4m3: a state saved before those keys existed trained mlp + qkv with e5m2 gradients, and
# resuming it under the new defaults is refused by name.)
LATER_TRAIN_KEYS = {"optimizer": "adamw", "lr_schedule": "cosine", "document_aligned": False,
                    "fp8_gemms": ["mlp", "qkv"], "fp8_gradients": "e5m2"}


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
    equal runs differ): Muon's settings without Muon, the cooldown without the wsd schedule, fp8's without fp8."""
    if section != "train":
        return False
    if key.startswith("muon_"):
        return values.get("optimizer") != "muon"
    if key == "cooldown_frac":
        return values.get("lr_schedule") != "wsd"
    if key == "fp8_gemms" and not values.get("fp8"):
        return True
    if key == "fp8_gradients" and not (values.get("fp8") and "mlp" in values.get("fp8_gemms", ["mlp"])):
        return True  # only the MLP's GEMMs read fp8 gradients
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
