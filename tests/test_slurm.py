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
    assert (tmp_path / "results" / "output.png").exists()
    assert (tmp_path / "results" / "tiny" / "eval" / "step_000006.json").exists()
    assert list((tmp_path / ".snakemake" / "slurm_logs").glob("rule_train/**/*.log"))
