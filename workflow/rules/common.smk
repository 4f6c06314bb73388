# Config validation and the paths all rules share. Nothing here writes a file; the configs the jobs read
# are written by the rules in config.smk, so `-n`, `--lint` and a failed validation leave no trace.
import json
import shlex
import sys
from pathlib import Path

import yaml

SRC = Path(workflow.basedir).parent / "src"
try:
    import gpt2pipe
except ImportError:  # snakemake installed apart from gpt2pipe (e.g. for --sdm conda): the repository's copy
    sys.path.insert(0, str(SRC))
from gpt2pipe import Gpt2pipeError, layout
from gpt2pipe.schema import schema as config_schema, typed_strings
from gpt2pipe.config import validate as validate_config


def _config_layers():
    """What each config file and --config set, in Snakemake's order: a problem is named by the last that set
    its key (`my.yaml: train.learnng_rate: unknown key; did you mean train.learning_rate?`)."""
    layers = []
    for f in workflow.configfiles:
        try:
            layers.append((str(f), yaml.safe_load(Path(f).read_text()) or {}))
        except (OSError, yaml.YAMLError):
            layers.append((str(f), {}))
    return layers + [("--config", dict(workflow.config_settings.config or {}))]


try:  # schema (paths, types, defaults) + cross-field rules (a missing corpus file: Snakemake's missing input)
    config.update(typed_strings(dict(config), config_schema()))
    config.update(validate_config(config, str(workflow.configfiles[-1]) if workflow.configfiles else "--config",
                                  _config_layers()))
except Gpt2pipeError as e:  # one line, without the Python frame a WorkflowError raised here would show
    print(e, file=sys.stderr)
    sys.exit(1)


def _conda_mode():
    try:
        from snakemake.settings.types import DeploymentMethod

        return DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
    except (ImportError, AttributeError):
        return False


# Each job runs the gpt2pipe CLI of this Python, or of the repository's src/ inside the conda env. These
# strings are quoted here, once, and go into commands as `{params.cli}` (unquoted: they are several words).
if _conda_mode():
    PYTHON = f"env PYTHONPATH={shlex.quote(str(SRC))} python"
else:
    PYTHON = shlex.quote(sys.executable)
GPT2PIPE = f"{PYTHON} -m gpt2pipe"
RES = config["resources"]
CONDA_ENV = "../../envs/gpt2pipe.yaml"  # relative to this file: the top-level envs/


def train_launcher():
    """How the training job starts its processes: one process, torchrun over one node's GPUs, or srun
    (one task per GPU, through the SLURM plugin's `mpi` resource) across nodes. srun is told the geometry:
    the plugin's job step hands the shell no SLURM_NTASKS / SLURM_NNODES of the allocation (it drops every
    SLURM_* but the job id), and without them srun starts one task. tests/test_nodes.py runs this command."""
    gpus, nodes = RES["train_gpus"], RES["train_nodes"]
    if nodes > 1:
        per_node = max(1, int(gpus))
        return (f"srun --kill-on-bad-exit=1 --nodes={int(nodes)} --ntasks={int(nodes) * per_node} "
                f"--ntasks-per-node={per_node} {GPT2PIPE}")
    if gpus > 1:
        return f"{PYTHON} -m torch.distributed.run --standalone --nproc_per_node {int(gpus)} -m gpt2pipe"
    return GPT2PIPE


# Paths, all from gpt2pipe.layout (the CLI's defaults are the same)
RESULTS = config["results_dir"]
DATA = str(layout.data_dir(config))
RUN = str(layout.run_dir(config))
FINEWEB = str(layout.fineweb_dir(config))
HELLASWAG_SOURCE = config["eval"]["hellaswag"]
HELLASWAG_NAME = layout.hellaswag_name(HELLASWAG_SOURCE)
HELLASWAG_BIN = str(layout.hellaswag_bin(config))
STEPS = layout.checkpoint_steps(config)
# rerun triggers: what decides a dataset, and what decides the trained weights (gpt2pipe.config)
DATA_ID = layout.data_fingerprint(config)
TRAIN_ID = layout.training_fingerprint(config)


def fineweb_token_files(wildcards):
    """The token files the shards are made of (rules/fineweb.smk): all listed files, or with
    data.max_tokens the first files that hold enough tokens, found one checkpoint at a time."""
    import json

    with open(checkpoints.fineweb_list.get().output[0]) as f:
        stems = [Path(entry["path"]).stem for entry in json.load(f)["files"]]
    limit = config["data"]["max_tokens"]
    if limit is None:  # every file: all downloads and tokenize jobs can run at once
        return [f"{FINEWEB}/tokens/{s}.bin" for s in stems]
    chosen, total = [], 0
    for s in stems:  # one file after another, until enough tokens
        chosen.append(checkpoints.fineweb_encode.get(stem=s).output[0])
        total += layout.token_count(chosen[-1])
        if total >= limit:
            break
    return chosen


def compared_runs_signature():
    """report.compare_runs: a digest of each other trained run's train.log, config.yaml and eval results, the
    report's parameter, so the report is redrawn when they change (gpt2pipe.layout.compared_runs_signature:
    not inputs, which Snakemake would lock against that run's own workflow). A run not trained yet is left
    out with a warning: this run still trains and reports, and the report is redrawn once that run exists."""
    runs = layout.runs_named(RESULTS, config["report"]["compare_runs"])
    for r in runs:
        if not r["exists"]:
            print(f"report.compare_runs: {r['name']} has no {r['log']} or {r['config']} yet: the report is drawn "
                  "without it", file=sys.stderr)
    return layout.compared_runs_signature(runs)


def write_stage_config(path, stage):
    """The config rules' job (rules/config.smk): the part of the config a stage reads, as YAML."""
    Path(path).write_text(layout.stage_config_text(config, stage))


def run_products():
    """What this run builds besides its report: checkpoints, train.log, eval results and samples, and with those
    sections the reward model's outputs, the rl stage's and the evaluate results of its final policy (and start)."""
    return ([str(layout.checkpoint(config, s)) for s in STEPS] + [f"{RUN}/train/train.log"]
            + [str(layout.eval_result(config, s)) for s in STEPS]
            + ([str(layout.samples(config, s)) for s in STEPS] if config["eval"]["samples"] else [])
            + ([str(p) for p in layout.reward_model_outputs(config)] if "reward_model" in config else [])
            + ([str(p) for p in layout.rl_outputs(config) + layout.rl_evaluations(config)] if "rl" in config else []))


def report_outputs():
    """The report's files: the figure, the executed notebook, metrics.tsv, and with an rl section rl_samples.md."""
    return [f"{RUN}/{name}" for name in ("output.png", "report.ipynb", "metrics.tsv")
            + (("rl_samples.md",) if "rl" in config else ())]


def redraw_number():
    """The latest rule's parameter, so that a deleted output of this run comes back through
    results/output.png. Snakemake leaves a missing intermediate file alone while the files made from it are up
    to date, so while one of the run's outputs (or its report) is missing this number is one more than the one
    the latest job last wrote to its log: the changed parameter reruns that job, which lists every output as its
    input, so the missing ones are rebuilt and the report redrawn before it. Once rebuilt, the number is the one
    logged again, so nothing reruns twice."""
    import os
    import re

    try:
        logged = re.findall(r"^redraw (\d+)$", Path(f"{RUN}/logs/latest.log").read_text(), re.M)
    except OSError:
        logged = []
    drawn = int(logged[-1]) if logged else 0
    return drawn + 1 if any(not os.path.exists(f) for f in run_products() + report_outputs()) else drawn


def announce_changed_settings():
    """One line per stage config that is out of date, naming the settings that changed (before Snakemake's
    own plan, where the same shows as each config rule's "params have changed" reason)."""
    files = {"data": f"{DATA}/config.yaml", "train": f"{RUN}/config/train.yaml",
             "evaluate": f"{RUN}/config/evaluate.yaml",
             **{stage: f"{RUN}/config/{stage}.yaml" for stage in ("reward_model", "rl") if stage in config}}
    for stage, path in files.items():
        if changed := layout.changed_settings(path, config, stage):
            print(f"{stage} settings changed since {path} was written: {'; '.join(changed)}", file=sys.stderr)


def latest_is_this_run():
    """Whether results/output.png is this run's report (or there is none yet): then the default target keeps it
    up to date; a copy drawn from another run is left to that run."""
    try:
        with open(f"{RESULTS}/report.ipynb") as f:
            drawn = json.load(f)["metadata"]["papermill"]["parameters"]["output_png"]
    except (OSError, ValueError, KeyError):
        return not Path(f"{RESULTS}/output.png").exists()
    return drawn == f"{RUN}/output.png"


def plan_on_one_screen():
    """`snakemake -n` prints the plan on one screen: the lines above, Snakemake's job counts and its reasons
    by rule, as `--quiet rules host` would; not one block per job (its files, reason, resources and command:
    after one changed training setting, 11 jobs and 121 of 185 lines) nor the host banner. Only in a dry run,
    and only without a --quiet or -p of the user's own: `snakemake -np` (or `-n --quiet host`) lists every job
    with its command. A run that executes prints each job as it starts, its command and a failed job's log, as
    the profile says.
    A filter on Snakemake's logger drops those records by their event (snakemake_interface_logger_plugins'
    LogEvent values)."""
    settings = workflow.output_settings
    # -p asked for by hand (the profile's printshellcmds is always on): the user wants each job's command
    asked_for_commands = any(a == "--printshellcmds" or (a[:1] == "-" and a[1:2] != "-" and a[1:].isalpha() and "p" in a)
                             for a in sys.argv[1:])
    if not settings.dryrun or settings.quiet or asked_for_commands:
        return
    import logging

    hidden = {"job_info", "shellcmd", "workflow_started"}
    logging.getLogger("snakemake.logging").addFilter(lambda record: getattr(record, "event", None) not in hidden)
    print("Dry run: jobs counted by rule (`snakemake -np` lists each job, its files, reason and command)",
          file=sys.stderr)


announce_changed_settings()
plan_on_one_screen()


def say_failed_jobs(snakemake_logs):
    """After a failure: one line per failed job, its rule and the last line of its log (gpt2pipe's one-line
    error), so the cause ends the output rather than scrolling away above the other jobs' messages. Read from
    Snakemake's own log, whose "Error in rule" blocks name each failed job's log."""
    import re

    for path in snakemake_logs if isinstance(snakemake_logs, list) else [snakemake_logs]:
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        for rule, logs in re.findall(r"^Error in rule[ ](\S+):\n(?:    .*\n)*?    log: (.+) \(check log", text, re.M):
            for log in logs.split(", "):
                try:
                    lines = [ln for ln in Path(log).read_text().splitlines() if ln.strip()]
                except OSError:
                    lines = []
                print(f"{rule} failed: {lines[-1] if lines else '(its log is empty)'} (log: {log})",
                      file=sys.stderr)
