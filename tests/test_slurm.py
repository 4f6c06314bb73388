"""The workflow submitted to a real SLURM cluster through workflow/profiles/slurm.

.ci/run starts a single-node cluster on the machine (scripts/local-slurm.sh); without one the test is
skipped. It checks that every stage ran as a SLURM job (squeue keeps finished jobs for MinJobAge)."""

import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, tiny_config

pytestmark = pytest.mark.slow


def cluster_idle() -> bool:
    if not shutil.which("sinfo"):
        return False
    r = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    return r.returncode == 0 and any(s in r.stdout for s in ("idle", "mix"))


@pytest.mark.skipif(not cluster_idle(), reason="no SLURM cluster up (scripts/local-slurm.sh start)")
def test_workflow_runs_under_slurm(tmp_path):
    cfg = tiny_config(tmp_path)
    cfg["results_dir"] = "results"
    cfg["resources"] = {"train_cpus_per_gpu": 1, "data_cpus": 1, "train_mem_mb": 1000, "job_mem_mb": 1000,
                        "train_runtime": 10, "job_runtime": 10}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "workflow" / "Snakefile"),
           "--workflow-profile", str(ROOT / "workflow" / "profiles" / "slurm"), "--directory", str(tmp_path),
           "--jobs", "4", "--configfile", str(tmp_path / "config.yaml")]
    # a hard timeout: a status check that never returns must not hang the test run
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run_id = next(line.split()[-1] for line in (r.stdout + r.stderr).splitlines() if "SLURM run ID:" in line)
    jobs = subprocess.run(["squeue", "-t", "all", "-h", "-o", "%j|%T|%k"], capture_output=True, text=True).stdout
    ours = {comment: state for name, state, comment in (ln.split("|") for ln in jobs.splitlines()) if name == run_id}
    for rule in ("rule_corpus", "rule_tokenize", "rule_hellaswag", "rule_train", "rule_evaluate_wildcards_000006",
                 "rule_sample_wildcards_000003", "rule_report"):
        assert ours.get(rule) == "COMPLETED", (rule, ours)
    assert (tmp_path / "results" / "tiny" / "output.png").exists()  # the default target: the run's own report
    assert (tmp_path / "results" / "tiny" / "eval" / "step_000006.json").exists()
    assert list((tmp_path / ".snakemake" / "slurm_logs").glob("rule_train/**/*.log"))


WRAPPER = r"""#!/bin/bash
# records its arguments (one JSON list per call), drops the GPU requests this GPU-less cluster would refuse,
# then runs the real command
python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@" >> "{log}"
args=()
for a in "$@"; do
  case "$a" in --gpus=*|--gres=gpu*|--ntasks-per-gpu=*|--cpus-per-gpu=*|--gpus-per-*) ;; *) args+=("$a") ;; esac
done
exec {real} "${{args[@]}}"
"""


def _calls(log):
    import json

    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.mark.skipif(not cluster_idle(), reason="no SLURM cluster up (scripts/local-slurm.sh start)")
def test_two_gpu_training_is_one_task_running_one_torchrun(tmp_path):
    """resources.train_gpus: 2 on one node: sbatch asks for 2 GPUs and no per-GPU task geometry, the job step
    is one `srun -n1 --gpus=2`, and inside it one torchrun starts 2 processes (plugin issue #459: with
    `--ntasks-per-gpu` the whole job step ran once per GPU). The cluster has no GPU, so wrappers on PATH record
    sbatch's and srun's arguments and drop the GPU requests; training itself runs as 2 CPU processes."""
    cfg = tiny_config(tmp_path)
    cfg["results_dir"] = "results"
    cfg["resources"] = {"train_gpus": 2, "train_cpus_per_gpu": 1, "data_cpus": 1, "train_mem_mb": 1000,
                        "job_mem_mb": 1000, "train_runtime": 10, "job_runtime": 10}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    snakemake = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "workflow" / "Snakefile"),
                 "--directory", str(tmp_path), "--configfile", str(tmp_path / "config.yaml")]
    # the shards locally (not what this test is about), then the training job through SLURM
    r = subprocess.run([*snakemake, "--cores", "1", "results/data/tiny/shards"], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    logs = {}
    for cmd in ("sbatch", "srun"):
        logs[cmd] = tmp_path / f"{cmd}.calls"
        (bin_dir / cmd).write_text(WRAPPER.format(log=logs[cmd], real=shutil.which(cmd)))
        (bin_dir / cmd).chmod(0o755)
    env = dict(__import__("os").environ, PATH=f"{bin_dir}:{__import__('os').environ['PATH']}")
    r = subprocess.run([*snakemake, "--workflow-profile", str(ROOT / "workflow" / "profiles" / "slurm"),
                        "--jobs", "1", "results/tiny/train/train.log"], capture_output=True, text=True, env=env,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    sbatch = [c for c in _calls(logs["sbatch"]) if any("rule_train" in a for a in c)]
    assert len(sbatch) == 1, _calls(logs["sbatch"])
    args = sbatch[0]
    assert "--gpus=2" in args, args  # how the plugin spells 2 GPUs
    assert not [a for a in args if a.startswith("--ntasks-per-gpu")], args
    assert [a for a in args if a.startswith(("--ntasks=", "-n"))] in ([], ["--ntasks=1"]), args  # one task
    steps = _calls(logs["srun"])
    assert len(steps) == 1, steps  # one job step ...
    assert "-n1" in steps[0] and "--gpus=2" in steps[0], steps[0]  # ... of one task holding both GPUs
    log = (tmp_path / "results" / "tiny" / "logs" / "train.log").read_text()
    # ... whose one torchrun started 2 processes, which trained the run together
    assert log.count("gpt2pipe train: ") == 1 and "x 2 processes" in log, log[-3000:]
    assert "ZeRO-1: 2 processes, rank 0" in log, log[-3000:]
