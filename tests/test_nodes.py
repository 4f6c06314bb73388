"""Training on two nodes, rehearsed on one CPU machine: the workflow's own train rule with
resources.train_nodes > 1 runs its multi-node command, `srun --kill-on-bad-exit=1 --nodes=2 --ntasks=4
--ntasks-per-node=2 python -m gpt2pipe train ... --resume` (workflow/rules/common.smk, train_launcher).

The machine has no two-node SLURM, so `srun` on PATH is a stand-in (SRUN below) for what the real one does
inside a two-node allocation: it starts the command once per task with the environment srun gives a task
(SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID / SLURM_NODEID / SLURM_STEP_NODELIST ..., no RANK, MASTER_ADDR or
MASTER_PORT: gpt2pipe.distributed derives them), tasks 0-1 on node "127.0.0.1" and 2-3 on "127.0.0.2" (both
loopback, so node 1 really reaches node 0's address), a TMPDIR per node, and --kill-on-bad-exit's end of
the step when a task fails. Everything after srun — the rule, the CLI, rendezvous, gloo collectives,
checkpointing — is the real thing. Each task records, through a Python audit hook, every file it creates,
writes, renames, links or removes, which shows who writes what.

Shown: 2 nodes x 2 tasks give the losses of 1 process with 4 accumulation steps; a run preempted on 2
nodes resumes on 1 node, and one preempted on 1 resumes on 2 nodes x 1 task, exactly; only global rank 0
(never node 1's local rank 0) writes checkpoints, states and logs, and no partial file is left.
"""

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, assert_same_run, run_train_process, tiny_config
from gpt2pipe import Gpt2pipeError, distributed

SRUN = r'''#!{python}
"""srun inside a {nodes}-node allocation, as far as gpt2pipe can tell (tests/test_nodes.py)."""
import json, os, signal, subprocess, sys, time

args = sys.argv[1:]
with open({log!r}, "a") as f:
    f.write(json.dumps(args) + "\n")
opts = {{}}
while args and args[0].startswith("--"):
    key, _, value = args.pop(0)[2:].partition("=")
    opts[key] = value
known = {{"kill-on-bad-exit", "nodes", "ntasks", "ntasks-per-node"}}
if set(opts) - known or not args:
    sys.exit(f"fake srun: unexpected options {{sorted(set(opts) - known)}} or no command")
nodes = int(opts.get("nodes", 1))
per_node = int(opts.get("ntasks-per-node", 1))
ntasks = int(opts.get("ntasks", nodes * per_node))
if nodes > {nodes} or ntasks != nodes * per_node:
    sys.exit(f"fake srun: {{ntasks}} tasks on {{nodes}} nodes do not fit {nodes} nodes x {{per_node}}")
names = [f"127.0.0.{{k + 1}}" for k in range(nodes)]
nodelist = f"127.0.0.[1-{{nodes}}]" if nodes > 1 else names[0]
procs = []
for rank in range(ntasks):
    node = rank // per_node  # srun's default block distribution
    env = {{k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}}
    tmp = os.path.join({scratch!r}, names[node])  # node-local scratch
    os.makedirs(tmp, exist_ok=True)
    env.update(SLURM_PROCID=str(rank), SLURM_NTASKS=str(ntasks), SLURM_NPROCS=str(ntasks),
               SLURM_LOCALID=str(rank % per_node), SLURM_NODEID=str(node), SLURM_NNODES=str(nodes),
               SLURM_STEP_ID="0", SLURM_STEP_NUM_TASKS=str(ntasks), SLURM_STEP_NUM_NODES=str(nodes),
               SLURM_STEP_NODELIST=nodelist, SLURM_JOB_NODELIST=nodelist, SLURM_NODELIST=nodelist,
               SLURM_TASKS_PER_NODE=f"{{per_node}}(x{{nodes}})", SLURMD_NODENAME=names[node], TMPDIR=tmp,
               PYTHONPATH=os.pathsep.join([{audit!r}, *filter(None, [os.environ.get("PYTHONPATH")])]))
    procs.append(subprocess.Popen(args, env=env))
code = 0
while any(p.poll() is None for p in procs):
    bad = [p.returncode for p in procs if p.returncode]
    if bad and opts.get("kill-on-bad-exit") == "1":  # a failed task ends the whole step
        code = bad[0]
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
    time.sleep(0.05)
codes = [p.wait() for p in procs]
sys.exit(code or max(codes, key=abs))
'''

# every write of a task under a watched folder, one line per event: "EVENT<TAB>ABSOLUTE PATH"
AUDIT = r'''import os, sys

_dir = os.environ.get("GPT2PIPE_TEST_WRITES")
if _dir and "SLURM_PROCID" in os.environ:
    _fd = os.open(os.path.join(_dir, f"task{os.environ['SLURM_PROCID']}.{os.getpid()}"),
                  os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    _WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    _ONE = {"os.remove", "os.rmdir", "os.mkdir", "os.truncate", "os.chmod", "os.utime", "tempfile.mkstemp"}

    def _hook(event, args):
        if event == "open":
            path, mode, flags = args
            paths = [path] if (mode and any(c in mode for c in "wax+")) or (not mode and flags & _WRITE) else []
        elif event in ("os.rename", "os.link", "os.symlink"):  # os.replace raises os.rename
            paths = list(args[:2])
        elif event == "shutil.copyfile":
            paths = [args[1]]
        elif event in _ONE:
            paths = [args[0]]
        else:
            return
        for p in paths:
            if isinstance(p, (str, bytes, os.PathLike)):
                os.write(_fd, f"{event}\t{os.path.abspath(os.fsdecode(p))}\n".encode())

    sys.addaudithook(_hook)
'''

STEPS = 8  # checkpoints at 4 and 8; a preempted run saves its state at 6


def _free_job_id() -> int:
    """A SLURM_JOB_ID whose port (gpt2pipe.distributed: 29500 + job id % 1000) nobody listens on."""
    for _ in range(200):
        job = random.randrange(1000, 100000)
        with socket.socket() as s:
            try:
                s.bind(("", 29500 + job % 1000))
            except OSError:
                continue
        return job
    raise AssertionError("no free port in 29500-30499")


class Workflow:
    def __init__(self, root: Path):
        self.root = root
        self.bin, self.writes, self.audit = root / "bin", root / "writes", root / "audit"
        for d in (self.bin, self.writes, self.audit):
            d.mkdir()
        self.srun_log = root / "srun.calls"
        (self.bin / "srun").write_text(SRUN.format(python=sys.executable, nodes=2, log=str(self.srun_log),
                                                   scratch=str(root / "node-scratch"), audit=str(self.audit)))
        (self.bin / "srun").chmod(0o755)
        (self.audit / "sitecustomize.py").write_text(AUDIT)
        cfg = tiny_config(root)
        cfg["results_dir"] = "results"
        cfg["data"]["paths"] = [str(root / "corpus.txt")]
        # 256 tokens per step = 2 x 32 x 4 tasks, or x 4 accumulation steps on one process
        cfg["train"].update(micro_batch_size=2, max_steps=STEPS, checkpoint_every=4, val_every=4, num_threads=1)
        self.cfg = cfg

    def train(self, run: str, nodes: int, gpus: int, preempt_at: int | None = None):
        """`snakemake <run>/train/train.log` with resources.train_nodes/train_gpus: the train rule's command
        under the stand-in srun, which the same PATH makes every `srun` of the job."""
        cfg = dict(self.cfg, run_name=run, resources={"train_nodes": nodes, "train_gpus": gpus,
                                                      "train_cpus_per_gpu": 1})
        (self.root / f"{run}.yaml").write_text(yaml.safe_dump(cfg))
        env = dict(os.environ, PATH=f"{self.bin}{os.pathsep}{os.environ['PATH']}", OMP_NUM_THREADS="1",
                   SLURM_JOB_ID=str(_free_job_id()), GPT2PIPE_TEST_WRITES=str(self.writes))
        for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "GPT2PIPE_PREEMPT_AT_STEP"):
            env.pop(k, None)
        if preempt_at is not None:
            env["GPT2PIPE_PREEMPT_AT_STEP"] = str(preempt_at)
        cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "workflow" / "Snakefile"),
               "--directory", str(self.root), "--cores", "2", f"results/{run}/train/train.log",
               "--configfile", str(self.root / f"{run}.yaml")]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        log = self.root / "results" / run / "logs" / "train.log"
        return r, log.read_text() if log.exists() else ""

    def srun_calls(self) -> list[list[str]]:
        return [json.loads(line) for line in self.srun_log.read_text().splitlines()] if self.srun_log.exists() else []

    def writes_by_task(self, under: Path) -> dict[int, list[tuple[str, str]]]:
        """Each task's file writes under `under`, from all runs so far; the record is then cleared."""
        out: dict[int, list] = {}
        for f in self.writes.glob("task*"):
            rank = int(f.name[4:].split(".")[0])
            for line in f.read_text().splitlines():
                event, path = line.split("\t")
                if Path(path).is_relative_to(under):
                    out.setdefault(rank, []).append((event, Path(path).relative_to(under).as_posix()))
            f.unlink()
        return out


@pytest.fixture(scope="module")
def wf(tmp_path_factory):
    """The workflow folder (corpus, shards built by the first run), and the uninterrupted one-process run
    of the same training config and shards."""
    return Workflow(tmp_path_factory.mktemp("nodes"))


def _single(wf: Workflow, run: str) -> Path:
    """One process, no launcher: the reference, trained from the config and shards the workflow wrote."""
    ref = wf.root / "single"
    if not (ref / "train" / "train.log").exists():
        r = run_train_process(wf.root / "results" / run / "config" / "train.yaml",
                              wf.root / "results" / "data" / "tiny" / "shards", ref)
        assert r.returncode == 0, r.stderr[-3000:]
    return ref


def _outputs_complete(run_dir: Path) -> None:
    """The train rule's outputs and the run's state, each once, and no temporary file of a write left over."""
    assert sorted(p.name for p in (run_dir / "train").iterdir()) == ["model_000004.pt", "model_000008.pt",
                                                                    "train.log"]
    assert not [p for p in run_dir.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]
    assert (run_dir / "train_state" / "state_000008.pt").is_file()


def _only_rank_0_wrote(writes: dict[int, list], expect: set[str]) -> None:
    assert set(writes) == {0}, {k: v[:5] for k, v in writes.items() if k}  # node 1's local rank 0 (task 2) too
    written = {path for event, path in writes[0] if event in ("os.rename", "os.link")}
    assert expect <= written, sorted(written)


@pytest.mark.slow
def test_two_nodes_run_the_rules_srun_command_and_equal_one_process(wf):
    r, log = wf.train("two_nodes", nodes=2, gpus=2)
    assert r.returncode == 0, r.stderr[-3000:] + log[-3000:]
    # the rule's command: one srun of 2 nodes x 2 tasks, each task the gpt2pipe CLI with --resume
    (call,) = wf.srun_calls()
    assert call[:4] == ["--kill-on-bad-exit=1", "--nodes=2", "--ntasks=4", "--ntasks-per-node=2"], call
    assert call[4:8] == [sys.executable, "-m", "gpt2pipe", "train"], call
    assert call[-2:] == ["--resume", "--retrain-on-change"], call
    run_dir = wf.root / "results" / "two_nodes"
    _only_rank_0_wrote(wf.writes_by_task(run_dir), {
        "train_state/state_000004.pt", "train_state/state_000008.pt", "train_state/model_000004.pt",
        "train_state/model_000008.pt", "train/model_000004.pt", "train/model_000008.pt", "train/train.log"})
    assert "1 accumulation x 4 processes" in log and "ZeRO-1: 4 processes" in log, log[-3000:]
    assert log.count("gpt2pipe train: ") == 1, log[-3000:]  # one process speaks for the job
    assert_same_run(_single(wf, "two_nodes"), run_dir)
    _outputs_complete(run_dir)


@pytest.mark.slow
def test_preempted_on_two_nodes_resumes_on_one_and_back(wf):
    """2 nodes x 2 tasks preempted at step 6, resumed by the same rule on 1 node (one process); 1 process
    preempted at step 2, resumed on 2 nodes x 1 task: both end as the uninterrupted run."""
    wf.writes_by_task(wf.root)  # earlier tests' record
    run_dir = wf.root / "results" / "down"
    r, log = wf.train("down", nodes=2, gpus=2, preempt_at=6)
    assert r.returncode != 0 and "at step 6: state saved" in log, r.stderr[-2000:] + log[-3000:]
    assert (run_dir / "train_state" / "state_000006.pt").is_file()
    _only_rank_0_wrote(wf.writes_by_task(run_dir), {"train_state/state_000006.pt"})
    r, log = wf.train("down", nodes=1, gpus=0)
    assert r.returncode == 0, r.stderr[-3000:] + log[-3000:]
    assert "resuming at step 6" in log and "x 1 processes" in log, log[-3000:]
    assert_same_run(_single(wf, "down"), run_dir)
    _outputs_complete(run_dir)

    run_dir = wf.root / "results" / "up"
    calls = len(wf.srun_calls())
    r, log = wf.train("up", nodes=1, gpus=0, preempt_at=2)
    assert r.returncode != 0 and "at step 2: state saved" in log, r.stderr[-2000:] + log[-3000:]
    assert len(wf.srun_calls()) == calls  # one node: no srun
    r, log = wf.train("up", nodes=2, gpus=1)
    assert r.returncode == 0, r.stderr[-3000:] + log[-3000:]
    assert wf.srun_calls()[-1][:4] == ["--kill-on-bad-exit=1", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1"]
    assert "resuming at step 2" in log and "2 accumulation x 2 processes" in log, log[-3000:]
    assert_same_run(_single(wf, "up"), run_dir)
    _outputs_complete(run_dir)
    _only_rank_0_wrote(wf.writes_by_task(run_dir), {"train_state/state_000008.pt", "train/train.log"})


# --- the pieces, without processes -------------------------------------------------------------------------

def test_a_task_of_srun_gets_its_rank_and_rank_0s_node_from_slurms_variables(monkeypatch, tmp_path):
    """Task 3 of a step on gpu[007-008] of a job on gpu[001-008], no scontrol on the node: global rank 3,
    local rank 1, rank 0's address the step's first node (not the job's), the port from the job id."""
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(k, "")  # recorded, so what _slurm_env sets is undone after the test
        monkeypatch.delenv(k)
    monkeypatch.setenv("PATH", str(tmp_path))  # no scontrol: the host list is expanded here
    for k, v in dict(SLURM_PROCID="3", SLURM_NTASKS="4", SLURM_LOCALID="1", SLURM_NODEID="1", SLURM_JOB_ID="41234",
                     SLURM_STEP_NODELIST="gpu[007-008]", SLURM_JOB_NODELIST="gpu[001-008]").items():
        monkeypatch.setenv(k, v)
    distributed._slurm_env()
    got = {k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    assert got == dict(RANK="3", WORLD_SIZE="4", LOCAL_RANK="1", MASTER_ADDR="gpu007", MASTER_PORT="29734")


@pytest.mark.parametrize("nodelist, first", [
    ("gpu[007-010,012],cpu1", "gpu007"), ("rack[2-3]-n[01-04]", "rack2-n01"), ("a,b[1-2]", "a"), ("node1", "node1"),
    ("127.0.0.[1-2]", "127.0.0.1"), ("n[3]", "n3")])
def test_the_first_host_of_a_slurm_host_list(nodelist, first):
    assert distributed.first_host(nodelist) == first


def test_the_gpu_of_a_task_that_sees_one_or_all_of_the_nodes_gpus():
    assert distributed.cuda_index(3, 4) == 3  # the node's GPUs visible: the local rank picks one
    assert distributed.cuda_index(3, 1) == 0  # srun bound one GPU to the task: it is device 0
    with pytest.raises(Gpt2pipeError, match="local rank 2 sees only 2 GPU"):
        distributed.cuda_index(2, 2)


def test_processes_that_find_different_saved_states_refuse_to_resume(tiny, tiny_shards, tmp_path, monkeypatch):
    """Nodes that each see their own run folder (no shared filesystem): process 0 finds the state of step 6, the
    other none. Resuming would train replicas that disagree; every process stops instead, saying why."""
    from gpt2pipe.train import loop

    loop.train(tiny, tiny_shards, tmp_path / "run", progress=False)
    monkeypatch.setattr(distributed, "gather_objects", lambda obj, world: [obj, None])
    with pytest.raises(Gpt2pipeError, match=r"found different saved states .*\[6, None\].*shared filesystem"):
        loop.train(tiny, tiny_shards, tmp_path / "run", resume=True, progress=False)
