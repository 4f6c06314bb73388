"""Where every stage reads and writes, and which config keys each stage depends on.

One source of truth for the CLI's defaults and for the Snakemake workflow (workflow/rules/common.smk
imports this module): the folder of a dataset and of a run, shard/corpus/FineWeb folders, the HellaSwag
output name, the checkpoint steps and the per-checkpoint eval/sample paths.

    <results_dir>/data/<data.name>/config.yaml     the data section the dataset was built from
    <results_dir>/data/<data.name>/corpus/         parquet documents (source text/parquet)
    <results_dir>/data/<data.name>/fineweb/        files.json, raw/<file>.parquet, tokens/<file>.bin
    <results_dir>/data/<data.name>/shards/         llm.c shards + shards.json
    <results_dir>/data/hellaswag/hellaswag_<name>.bin
    <results_dir>/<run_name>/config.yaml           the resolved run config
    <results_dir>/<run_name>/config/<stage>.yaml   the part of it a stage depends on (train, evaluate)
    <results_dir>/<run_name>/train/model_NNNNNN.pt, train.log
    <results_dir>/<run_name>/eval/step_NNNNNN.json, samples/step_NNNNNN.txt
    <results_dir>/<run_name>/reward_model/model.pt, eval.json, reward_model.log   (a reward_model section)
    <results_dir>/<run_name>/rl/model_NNNNNN.pt, rl.log, eval_NNNNNN.json,      (an rl section)
                                samples_NNNNNN.txt, evaluate_NNNNNN.json
    <results_dir>/<run_name>/output.png, metrics.tsv, report.ipynb, rl_samples.md (an rl section)

Datasets are shared by runs: the data stages depend on the data section alone (`stage_config(raw, "data")`),
so a second run over the same data plans no data job and leaves the first run's outputs untouched.
"""

from __future__ import annotations

from pathlib import Path

from gpt2pipe.config import NOT_IDENTITY, data_identity, digest, training_identity

HELLASWAG_BUILTIN = ("demo", "full")
# eval keys that only the sample stage reads (passed to it on the command line): not the evaluate stage's
SAMPLE_KEYS = ("samples", "sample_tokens", "sample_temperature", "sample_top_k", "sample_prompt")


def data_dir(raw: dict) -> Path:
    """The dataset's folder, shared by every run whose data section names it."""
    return Path(raw["results_dir"]) / "data" / raw["data"]["name"]


def run_dir(raw: dict) -> Path:
    return Path(raw["results_dir"]) / raw["run_name"]


def corpus_dir(raw: dict) -> Path:
    return data_dir(raw) / "corpus"


def shard_dir(raw: dict) -> Path:
    return data_dir(raw) / "shards"


def fineweb_dir(raw: dict) -> Path:
    """files.json, raw/<file>.parquet and tokens/<file>.bin of source fineweb."""
    return data_dir(raw) / "fineweb"


def hellaswag_name(source: str) -> str:
    """demo, full, or the stem of a .jsonl/.bin path: the eval file is hellaswag_<name>.bin."""
    return source if source in HELLASWAG_BUILTIN else Path(source).stem


def hellaswag_dir(raw: dict) -> Path:
    return Path(raw["results_dir"]) / "data" / "hellaswag"


def hellaswag_bin(raw: dict, source: str | None = None) -> Path:
    return hellaswag_dir(raw) / f"hellaswag_{hellaswag_name(source or raw['eval']['hellaswag'])}.bin"


def checkpoint_steps(raw: dict) -> list[int]:
    """Steps with a model snapshot, each evaluated (TrainConfig.checkpoint_steps of a validated config)."""
    from gpt2pipe.config import TrainConfig

    return TrainConfig(**raw["train"]).checkpoint_steps()


def checkpoint(raw: dict, step: int) -> Path:
    return run_dir(raw) / "train" / f"model_{step:06d}.pt"


def eval_result(raw: dict, step: int) -> Path:
    return run_dir(raw) / "eval" / f"step_{step:06d}.json"


def rl_dir(raw: dict) -> Path:
    return run_dir(raw) / "rl"


def rl_held_out(raw: dict, step: int) -> tuple[Path, Path]:
    """The rl stage's held-out reward and KL of one step (eval_NNNNNN.json) and its responses (samples_*.txt)."""
    return rl_dir(raw) / f"eval_{step:06d}.json", rl_dir(raw) / f"samples_{step:06d}.txt"


def rl_outputs(raw: dict) -> list[Path]:
    """What the rl stage declares: its log, its final policy (rl/model_NNNNNN.pt) and, with held-out prompts,
    the held-out results of step 0 (the starting model) and of the final step, which the report compares. Those
    of the steps between are written beside them undeclared: after a change of rl.checkpoint_every a finished run
    resumes with nothing to train, and declared results of the new steps could never be made."""
    steps = raw["rl"]["steps"]
    held = [p for s in (0, steps) for p in rl_held_out(raw, s)] if raw["rl"]["eval_prompts"] else []
    return [rl_dir(raw) / "rl.log", rl_dir(raw) / f"model_{steps:06d}.pt", *held]


def rl_evaluation(raw: dict, step: int) -> Path:
    """`gpt2pipe evaluate` of an RL checkpoint (val loss, HellaSwag): evaluate_NNNNNN.json, not the stage's own
    held-out eval_NNNNNN.json; step 0 is rl.init_from's."""
    return rl_dir(raw) / f"evaluate_{step:06d}.json"


def rl_evaluations(raw: dict) -> list[Path]:
    """Val loss and HellaSwag of the model RL starts from and of its final policy. The start's is the run's final
    checkpoint's eval result (evaluated anyway), or with rl.init_from rl/evaluate_000000.json."""
    start = rl_evaluation(raw, 0) if raw["rl"]["init_from"] else eval_result(raw, checkpoint_steps(raw)[-1])
    return [start, rl_evaluation(raw, raw["rl"]["steps"])]


def reward_model_dir(raw: dict) -> Path:
    return run_dir(raw) / "reward_model"


def reward_model_checkpoint(raw: dict) -> Path:
    return reward_model_dir(raw) / "model.pt"


def reward_model_outputs(raw: dict) -> list[Path]:
    """What the reward_model stage declares: the model, its held-out pair accuracy and its step log."""
    out = reward_model_dir(raw)
    return [out / "model.pt", out / "eval.json", out / "reward_model.log"]


def samples(raw: dict, step: int) -> Path:
    return run_dir(raw) / "samples" / f"step_{step:06d}.txt"


def token_count(path: str | Path) -> int:
    """Tokens in an llm.c-format token file or shard, from its checked header (no token is read)."""
    from gpt2pipe.data.llmc_format import read_shard

    return len(read_shard(path, check_tokens=False))


# --- what each stage depends on -------------------------------------------------------------------------

def stage_config(raw: dict, stage: str) -> dict:
    """The config a stage's job reads, without the keys that cannot change its output, so that changing
    those never reruns it (Snakemake reruns a job whose config file changed):

    data      the data section alone (not data.workers: the job sets it to its threads): corpus, tokenize,
              FineWeb shards. Runs with the same data section share one dataset and never rebuild it.
    train     all but the report, the cluster resources, the rl and reward_model sections and the eval
              section but eval.val_tokens (the budget of training's periodic validation loss)
    rl        train's, the rl section and (if there is one) the reward_model section
    reward_model  train's, and the reward_model section
    evaluate  all but the rl, reward_model and data sections (the shards come as a path), the report, the resources and the
              sample keys (the sample rule passes those itself)
    report    the whole resolved config but the resources (what results/<run>/config.yaml records)
    """
    data = {k: v for k, v in raw["data"].items() if k != "workers"}
    if stage == "data":
        return {"data": data}
    # RL and the reward model come after training: their settings never retrain or re-evaluate
    drop = {"resources", "report", "rl", "reward_model"}
    if stage in ("train", "rl", "reward_model"):
        kept = {k: v for k, v in raw.items() if k not in drop}
        return {**kept, "data": data, "eval": {"val_tokens": raw["eval"]["val_tokens"]},
                **({stage: raw[stage]} if stage != "train" else {}),
                # rl with rl.reward reward_model reads the reward model the run's reward_model section trains
                **({"reward_model": raw["reward_model"]} if stage == "rl" and "reward_model" in raw else {})}
    if stage == "evaluate":
        return {**{k: v for k, v in raw.items() if k not in drop | {"data"}},
                "eval": {k: v for k, v in raw["eval"].items() if k not in SAMPLE_KEYS}}
    if stage == "report":
        return {k: v for k, v in raw.items() if k != "resources"}
    raise ValueError(f"no stage config for {stage!r}")


def stage_config_text(raw: dict, stage: str) -> str:
    import yaml

    head = f"# gpt2pipe {stage} config, written by the workflow from the resolved run config\n"
    return head + yaml.safe_dump(stage_config(raw, stage), sort_keys=False)


def settings(tree: dict, prefix: str = "") -> list[str]:
    """`section.key=value` (JSON value) for every leaf of a config: a rule's params, one per setting, so that
    Snakemake's "params have changed" reason names the settings that changed, and only them."""
    import json

    out = []
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out += settings(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}={json.dumps(v, sort_keys=True)}")
    return out


def changed_settings(path: Path, raw: dict, stage: str) -> list[str]:
    """The settings that differ between a stage's config file on disk and the config now (empty when the file
    is missing or unreadable): `key: old -> new`, what the workflow prints before it reruns that stage."""
    import yaml

    try:
        old = dict(s.split("=", 1) for s in settings(yaml.safe_load(Path(path).read_text()) or {}))
    except (OSError, ValueError, yaml.YAMLError):
        return []
    new = dict(s.split("=", 1) for s in settings(stage_config(raw, stage)))
    return [f"{k}: {old.get(k, '(none)')} -> {new.get(k, '(none)')}" for k in sorted(old.keys() | new.keys())
            if old.get(k) != new.get(k)]


def data_fingerprint(raw: dict) -> str:
    """Hash of what decides a dataset's contents (config.data_identity)."""
    return digest(data_identity(raw))


def training_fingerprint(raw: dict) -> str:
    """Hash of what decides the trained weights (config.training_identity)."""
    return digest(training_identity(raw))


def runs_named(results_dir: str, names: list[str]) -> list[dict]:
    """report.compare_runs' other runs under results_dir: each with its train.log, resolved config.yaml and eval
    results; `exists` is False while it has no log or config yet (not trained through the workflow). Here,
    not in report.py, so the workflow can read them without importing matplotlib at every parse."""
    out = []
    for name in names:
        folder = run_dir({"results_dir": results_dir, "run_name": name})
        log, conf = folder / "train" / "train.log", folder / "config.yaml"
        out.append({"name": name, "log": log, "config": conf, "exists": log.is_file() and conf.is_file(),
                    "evals": sorted((folder / "eval").glob("step_*.json"))})
    return out


def compared_runs_signature(runs: list[dict]) -> str:
    """A digest of the compared runs' files (path, size, modification time), or of their absence: the report
    rule's parameter, so the report is redrawn when another run's log or results change. (Not its inputs:
    Snakemake would lock them, and that run's own workflow, which rewrites its log as it trains, could not
    run beside this one.)"""
    import hashlib

    parts = []
    for r in runs:
        files = [r["log"], r["config"], *r["evals"]] if r["exists"] else []
        parts.append(f"{r['name']}:" + ",".join(f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


__all__ = ["NOT_IDENTITY", "checkpoint", "compared_runs_signature", "runs_named",
           "report_notebook", "checkpoint_steps", "corpus_dir", "data_dir", "data_fingerprint",
           "eval_result", "fineweb_dir", "hellaswag_bin", "hellaswag_name", "run_dir", "samples", "shard_dir",
           "settings", "changed_settings", "stage_config", "stage_config_text", "token_count",
           "training_fingerprint", "rl_dir", "rl_held_out", "rl_outputs", "rl_evaluation", "rl_evaluations",
           "reward_model_checkpoint", "reward_model_dir", "reward_model_outputs"]


def report_notebook() -> Path:
    """The report notebook shipped inside the package (package data), found wherever gpt2pipe is installed."""
    from importlib import resources

    return Path(str(resources.files("gpt2pipe") / "notebooks" / "report.ipynb"))
