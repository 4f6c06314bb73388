# Config validation and the paths every rule shares.
import hashlib
import json
import sys
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

SRC = Path(workflow.basedir).parent / "src"


def _conda_mode():
    try:
        from snakemake.settings.types import DeploymentMethod

        return DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
    except (ImportError, AttributeError):
        return False


try:  # full validation (schema + cross-field rules) when gpt2pipe is importable here
    from gpt2pipe import Gpt2pipeError
    from gpt2pipe.config import validate as validate_config

    try:
        config.update(validate_config(config, "config"))
    except Gpt2pipeError as e:
        raise WorkflowError(str(e)) from None
except ImportError:  # snakemake installed apart from gpt2pipe (e.g. --sdm conda): the schema alone
    validate(config, "../schemas/config.schema.yaml")

# each job runs the gpt2pipe CLI from this Python's environment, or from the repo inside a conda env
PYTHON = f"env PYTHONPATH={SRC} python" if _conda_mode() else sys.executable
GPT2PIPE = f"{PYTHON} -m gpt2pipe"
RES = config["resources"]


def train_launcher():
    """How the training job starts its processes: one process, torchrun over one node's GPUs, or srun
    (one task per GPU, through the SLURM plugin's `mpi` resource) across nodes."""
    gpus, nodes = RES["train_gpus"], RES["train_nodes"]
    if nodes > 1:
        return f"srun --kill-on-bad-exit=1 {GPT2PIPE}"
    if gpus > 1:
        return f"{PYTHON} -m torch.distributed.run --standalone --nproc_per_node {gpus} -m gpt2pipe"
    return GPT2PIPE
CONDA_ENV = "../../envs/gpt2pipe.yaml"

RESULTS = config["results_dir"]
DATA = f"{RESULTS}/data/{config['data']['name']}"
RUN = f"{RESULTS}/{config['run_name']}"
FINEWEB = f"{DATA}/fineweb"
HELLASWAG_SOURCE = config["eval"]["hellaswag"]
HELLASWAG_NAME = HELLASWAG_SOURCE if HELLASWAG_SOURCE in ("demo", "full") else Path(HELLASWAG_SOURCE).stem
HELLASWAG_BIN = f"{RESULTS}/data/hellaswag/hellaswag_{HELLASWAG_NAME}.bin"


def checkpoint_steps():
    t = config["train"]
    return [*range(t["checkpoint_every"], t["max_steps"], t["checkpoint_every"]), t["max_steps"]]


def section_hash(*sections):
    """A param that changes when these config sections change, so Snakemake's params trigger reruns them."""
    payload = json.dumps({s: config[s] for s in sections}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def resolved_config():
    """The full validated config as one file the CLI reads; rewritten only when it changes (keeps mtimes)."""
    path = Path(RUN) / "config.yaml"
    text = yaml.safe_dump(dict(config), sort_keys=False)
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(path)


CONFIG_FILE = resolved_config()


def token_count(path):
    """Tokens in an llm.c-format file, from its header."""
    with open(path, "rb") as f:
        return int.from_bytes(f.read(12)[8:12], "little")


def fineweb_token_files(wildcards):
    """The token files the shards are made of (rules/fineweb.smk): all listed files, or with
    data.max_tokens the first files that hold enough tokens, found one checkpoint at a time."""
    with open(checkpoints.fineweb_list.get().output[0]) as f:
        stems = [Path(entry["path"]).stem for entry in json.load(f)["files"]]
    limit = config["data"]["max_tokens"]
    if limit is None:  # every file: all downloads and tokenize jobs can run at once
        return [f"{FINEWEB}/tokens/{s}.bin" for s in stems]
    chosen, total = [], 0
    for s in stems:  # one file after another, until enough tokens
        chosen.append(checkpoints.fineweb_encode.get(stem=s).output[0])
        total += token_count(chosen[-1])
        if total >= limit:
            break
    return chosen
