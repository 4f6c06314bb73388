"""Validation of a config: the schema (with its defaults filled in), then the cross-field rules a schema
cannot say. Messages name the dotted keys and their values, so the fix is obvious."""

from __future__ import annotations

import copy

from gpt2pipe.config.fingerprint import with_sets
from gpt2pipe.config.model import ModelConfig
from gpt2pipe.schema import Problem, Validator, schema, schema_problem


def _cross_field_problem(cfg: dict) -> Problem | None:
    """The rules a schema cannot say; each message names the values, so the fix is obvious."""
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
    errors = sorted(Validator(schema()).iter_errors(cfg), key=lambda e: list(e.path))
    if errors:
        raise schema_problem(errors[0])
    problem = _cross_field_problem(cfg)
    if problem:
        raise problem
    return with_sets(cfg)
