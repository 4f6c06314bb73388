"""End to end: the Snakemake workflow on a tiny config, in a temporary directory."""

import json
import re
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, tiny_config

pytestmark = pytest.mark.slow
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "workflow" / "Snakefile"), "--cores", "2"]


RESULTS = "my results"  # a space in every path: each command must quote what it interpolates


def snakemake(workdir, *args, configfile="config.yaml", check=True):
    # options such as --forcerun take several values: the config file goes last
    r = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), *args, f"--configfile={workdir / configfile}"],
                       capture_output=True, text=True, timeout=900)
    if check:
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout + r.stderr


def files_under(root):
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and ".snakemake" not in p.parts}


def planned_jobs(workdir, *args, configfile="config.yaml") -> dict[str, int]:
    """The jobs a dry run would execute, from Snakemake's job-stats table."""
    out = snakemake(workdir, "--dry-run", *args, configfile=configfile)
    if "Nothing to be done" in out:
        return {}
    table = out.split("job ", 1)[1].split("total", 1)[0]
    jobs = {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}
    jobs.pop("all", None)  # the default target's own (empty) job
    return jobs


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    wd = tmp_path_factory.mktemp("wf")
    cfg = tiny_config(wd, report={"log_scale": True})
    cfg["results_dir"] = RESULTS
    cfg["data"]["paths"] = ["corpus.txt"]
    (wd / "config.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(wd, f"{RESULTS}/output.png")  # the quick start's target
    return wd


def test_demo_outputs(workdir):
    res = workdir / RESULTS
    png = (res / "output.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png == (res / "tiny" / "output.png").read_bytes()
    nb = json.loads((res / "report.ipynb").read_text())
    assert nb["metadata"]["papermill"]["parameters"]["output_png"] == f"{RESULTS}/tiny/output.png"
    assert all(c.get("execution_count") for c in nb["cells"] if c["cell_type"] == "code")
    images = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"] if "image/png" in o.get("data", {})]
    assert len(images) == 1  # the figure is in the executed notebook, not only in the PNG
    for step in (3, 6):
        m = json.loads((res / "tiny" / "eval" / f"step_{step:06d}.json").read_text())
        assert m["step"] == step and m["val_loss"] < 11 and m["hellaswag_examples"] == 8
    metrics = (res / "tiny" / "metrics.tsv").read_text().splitlines()
    assert metrics[0].split("\t") == ["step", "tokens", "val_loss", "hellaswag_acc_norm", "hellaswag_acc"]
    assert [row.split("\t")[0] for row in metrics[1:]] == ["3", "6"]
    samples = (res / "tiny" / "samples" / "step_000006.txt").read_text()
    assert samples.count("--- sample") == 3
    for rule in ("data_config", "corpus", "tokenize"):
        assert (res / "data" / "tiny" / "benchmarks" / f"{rule}.tsv").exists()
    for rule in ("run_config", "train_config", "train", "evaluate_000003", "sample_000003", "report", "latest"):
        assert (res / "tiny" / "benchmarks" / f"{rule}.tsv").exists()
        assert (res / "tiny" / "logs" / f"{rule}.log").exists()
    # the resolved config is written by a rule, and the stages read only their part of it
    assert yaml.safe_load((res / "tiny" / "config.yaml").read_text())["train"]["max_steps"] == 6
    assert set(yaml.safe_load((res / "data" / "tiny" / "config.yaml").read_text())) == {"data"}
    # nothing outside the results folder but the inputs (and Snakemake's own .snakemake/)
    assert {f for f in files_under(workdir) if not f.startswith(f"{RESULTS}/")} == {"config.yaml", "corpus.txt"}


def test_rerun_does_nothing(workdir):
    assert planned_jobs(workdir) == {}


def test_html_report_right_after_the_quick_start(workdir):
    snakemake(workdir, "--report", "report.html")
    html = (workdir / "report.html").read_text(errors="replace")
    assert len(html) > 50_000
    for name in ("output.png", "metrics.tsv", "step_000006.txt"):
        assert name in html


def test_lint_is_clean(workdir):
    out = snakemake(workdir, "--lint")
    assert "Congratulations, your workflow is in a good condition!" in out, out


def test_dry_run_and_lint_write_nothing(tmp_path):
    cfg = tiny_config(tmp_path)
    cfg["results_dir"] = "results"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    before = files_under(tmp_path)
    assert "train" in planned_jobs(tmp_path)
    snakemake(tmp_path, "--lint")
    cfg["train"]["max_steps"] = 0  # invalid: fails validation
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    assert "train.max_steps" in snakemake(tmp_path, "--dry-run", configfile="bad.yaml", check=False)
    assert files_under(tmp_path) == before | {"bad.yaml"}
    assert not (tmp_path / "results").exists()


def test_second_run_shares_the_dataset(workdir):
    """Another run over the same data section plans no data job, and running it leaves the first run
    with nothing to do (no rebuilt corpus or shards, no retraining)."""
    cfg = yaml.safe_load((workdir / "config.yaml").read_text())
    cfg["run_name"] = "tiny2"
    cfg["train"]["learning_rate"] = 0.002
    cfg["data"]["workers"] = 2  # how the dataset is built, not what it holds
    (workdir / "config2.yaml").write_text(yaml.safe_dump(cfg))
    jobs = planned_jobs(workdir, configfile="config2.yaml")
    assert not {"data_config", "corpus", "tokenize", "hellaswag"} & set(jobs), jobs
    assert jobs["train"] == 1
    shards = workdir / RESULTS / "data" / "tiny" / "shards"
    before = {p.name: p.stat().st_mtime_ns for p in shards.iterdir()}
    snakemake(workdir, configfile="config2.yaml")
    assert {p.name: p.stat().st_mtime_ns for p in shards.iterdir()} == before
    assert (workdir / RESULTS / "tiny2" / "eval" / "step_000006.json").exists()
    assert planned_jobs(workdir) == {}
    assert planned_jobs(workdir, configfile="config2.yaml") == {}
    # keys a stage does not read never rerun it: a new eval batch size re-evaluates, it does not retrain
    cfg["eval"]["batch_size"] = 4
    (workdir / "config2.yaml").write_text(yaml.safe_dump(cfg))
    assert planned_jobs(workdir, configfile="config2.yaml") == {"evaluate_config": 1, "run_config": 1, "evaluate": 2,
                                                                "report": 1}
    # the data section changes: the dataset is rebuilt, and only for the run that asks for it
    cfg["data"]["val_tokens"] = 2048
    (workdir / "config2.yaml").write_text(yaml.safe_dump(cfg))
    assert {"data_config", "corpus", "tokenize", "train"} <= set(planned_jobs(workdir, configfile="config2.yaml"))


def test_config_values_never_run_as_commands(tmp_path):
    """A HellaSwag path made of shell syntax is a file name: the job reads it, nothing runs it."""
    from gpt2pipe.eval.hellaswag import demo_jsonl

    name = "x;touch F;y.jsonl"
    (tmp_path / name).write_text("".join(demo_jsonl().read_text().splitlines(True)[:4]))
    cfg = tiny_config(tmp_path, eval={"hellaswag": name})
    cfg["results_dir"] = "results"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(tmp_path, "results/data/hellaswag/hellaswag_x;touch F;y.bin")
    assert (tmp_path / "results" / "data" / "hellaswag" / "hellaswag_x;touch F;y.bin").stat().st_size > 1024
    assert not list(tmp_path.rglob("F")) and not (ROOT / "F").exists()


def test_forcerun_evaluate_reuses_checkpoints(workdir):
    jobs = planned_jobs(workdir, "--forcerun", "evaluate")
    assert jobs == {"evaluate": 2, "report": 1, "latest": 1}  # results/output.png is this run's: redrawn too
    ckpt = workdir / RESULTS / "tiny" / "train" / "model_000006.pt"
    before = ckpt.stat().st_mtime_ns
    snakemake(workdir, "--forcerun", "evaluate")
    assert ckpt.stat().st_mtime_ns == before
    assert planned_jobs(workdir) == {}


def test_deleting_one_eval_reruns_only_it(workdir):
    (workdir / RESULTS / "tiny" / "eval" / "step_000003.json").unlink()
    assert planned_jobs(workdir) == {"evaluate": 1, "report": 1, "latest": 1}


def test_bad_config_fails_before_any_job(workdir, tmp_path):
    cfg = yaml.safe_load((workdir / "config.yaml").read_text())
    cfg["train"]["learning_rat"] = 1
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    r = subprocess.run([*SNAKEMAKE, "--directory", str(tmp_path), "--configfile", str(tmp_path / "config.yaml"),
                        "--dry-run"], capture_output=True, text=True)
    assert r.returncode != 0
    assert "train.learning_rat: unknown key; did you mean train.learning_rate?" in r.stdout + r.stderr
    assert not (tmp_path / RESULTS).exists()


def test_fineweb_file_by_file_jobs_from_the_hub_cache(tmp_path):
    """FineWeb through Snakemake with the real huggingface_hub in offline mode: one download and tokenize
    job per file; max_tokens stops after the files it needs; files stay cached when more are needed."""
    import os

    import numpy as np

    from conftest import fineweb_parquet, hub_cache, shakespeare_docs
    from gpt2pipe.data.llmc_format import read_shard
    from gpt2pipe.data.tokenizer import encode_documents

    parts = shakespeare_docs(3, 100)
    src = [fineweb_parquet(tmp_path / "src" / f"{i:03d}_00000.parquet", d) for i, d in enumerate(parts)]
    hub_cache(tmp_path / "hub", "HuggingFaceFW/fineweb", {f"sample/10BT/{p.name}": p for p in src})
    first = sum(len(d) for d in encode_documents(parts[0]))
    cfg = tiny_config(tmp_path, data={"name": "fw", "source": "fineweb", "paths": [], "max_tokens": first + 1})
    cfg["results_dir"] = "results"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    data = tmp_path / "results" / "data" / "fw"

    def run(*args):
        r = subprocess.run([*SNAKEMAKE, "--directory", str(tmp_path), *args, "results/data/fw/shards",
                            f"--configfile={tmp_path / 'config.yaml'}"], capture_output=True, text=True,
                           timeout=900, env=env)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        return r.stdout + r.stderr

    run()
    assert sorted(p.name for p in (data / "fineweb" / "tokens").glob("*.bin")) == ["000_00000.bin", "001_00000.bin"]
    assert not (data / "fineweb" / "raw" / "002_00000.parquet").exists()
    m = json.loads((data / "shards" / "shards.json").read_text())
    assert m["tokens"] == first + 1

    cfg["data"]["max_tokens"] = None
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    out = run("--dry-run")
    assert re.search(r"^fineweb_download\s+1$", out, re.M) and re.search(r"^fineweb_encode\s+1$", out, re.M)
    run()
    m = json.loads((data / "shards" / "shards.json").read_text())
    tokens = np.concatenate([read_shard(data / "shards" / f) for f in m["val"] + m["train"]])
    expected = np.concatenate([np.array(d) for docs in parts for d in encode_documents(docs)])
    assert np.array_equal(tokens, expected)
    listing = json.loads((data / "fineweb" / "files.json").read_text())
    assert listing["commit"] == (tmp_path / "hub" / "datasets--HuggingFaceFW--fineweb" / "refs" / "main").read_text()
    assert len(list((data / "logs" / "fineweb_encode").glob("*.log"))) == 3


def test_dot_test_config_plans_the_whole_workflow(tmp_path):
    """.test/ (the template's CI config) is a working directory of its own."""
    import shutil

    shutil.copytree(ROOT / ".test", tmp_path / "t")
    r = subprocess.run([*SNAKEMAKE, "--directory", str(tmp_path / "t"), "--dry-run"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert re.search(r"^train\s+1$", r.stdout, re.M) and re.search(r"^evaluate\s+2$", r.stdout, re.M)


def test_layout_stage_configs_hold_what_decides_each_stage(tmp_path):
    """What each stage's config file holds (gpt2pipe.layout): a key a stage does not read never reruns it."""
    from gpt2pipe import config, layout

    raw = config.validate(tiny_config(tmp_path))

    def changed(stage, section, key, value):
        other = config.validate({**raw, section: {**raw[section], key: value}})
        return layout.stage_config(raw, stage) != layout.stage_config(other, stage)

    assert layout.stage_config(raw, "data") == {"data": {k: v for k, v in raw["data"].items() if k != "workers"}}
    assert not changed("data", "data", "workers", 7) and not changed("data", "train", "learning_rate", 1.0)
    assert changed("data", "data", "val_tokens", 2048)
    assert changed("train", "train", "learning_rate", 1.0) and changed("train", "data", "max_tokens", 4096)
    assert changed("train", "eval", "val_tokens", 512)
    for section, key, value in (("eval", "batch_size", 2), ("eval", "samples", 1), ("eval", "hellaswag", "full"),
                                ("report", "log_scale", True), ("resources", "train_gpus", 2)):
        assert not changed("train", section, key, value), key
    assert changed("evaluate", "eval", "batch_size", 2) and not changed("evaluate", "eval", "sample_top_k", 3)
    assert not changed("evaluate", "data", "max_tokens", 4096)
    with_rm = config.validate({**raw, "reward_model": {"prompt_tokens": 4, "response_tokens": 4}})  # never retrains
    assert all(layout.stage_config(with_rm, s) == layout.stage_config(raw, s) for s in ("train", "evaluate"))
    assert layout.stage_config(with_rm, "reward_model")["reward_model"] == with_rm["reward_model"]
    assert layout.checkpoint_steps(raw) == config.from_dict(raw).train.checkpoint_steps() == [3, 6]
    assert layout.hellaswag_bin(raw).name == "hellaswag_demo.bin"
    assert layout.hellaswag_name("some/dir/val.jsonl") == "val" and layout.hellaswag_name("full") == "full"
    assert layout.data_dir(raw) == tmp_path / "results" / "data" / "tiny"
    assert layout.eval_result(raw, 3) == tmp_path / "results" / "tiny" / "eval" / "step_000003.json"
    assert layout.report_notebook().is_file()


def test_an_rl_section_adds_the_rl_stage_and_only_it(workdir):
    """With an rl: section the default target also runs `gpt2pipe rl` on the final checkpoint, with prompts
    from the run's val shard, and `gpt2pipe evaluate` on its final policy; training and evaluation stay done
    (the rl section is not part of their configs), the report gains the RL panels, table and samples, deleted RL
    outputs come back through the plot, and changing an rl setting reruns RL alone (and rewrites the run's
    resolved config, the record the report reads)."""
    snakemake(workdir)  # the module's earlier tests may leave jobs to do: start from a finished run
    cfg = yaml.safe_load((workdir / "config.yaml").read_text())
    cfg["rl"] = {"steps": 2, "batch_size": 4, "mini_batch_size": 4, "forward_batch": 4, "max_new_tokens": 4,
                 "prompt_tokens": 4, "num_prompts": 8, "eval_prompts": 2, "checkpoint_every": 2, "ppo_epochs": 1}
    (workdir / "rl.yaml").write_text(yaml.safe_dump(cfg))
    rl_jobs = {"rl_config": 1, "rl": 1, "rl_evaluate": 1, "run_config": 1, "report": 1, "latest": 1}
    assert planned_jobs(workdir, configfile="rl.yaml") == rl_jobs
    png_height = int.from_bytes((workdir / RESULTS / "output.png").read_bytes()[20:24], "big")
    snakemake(workdir, configfile="rl.yaml")
    run = workdir / RESULTS / "tiny"
    out = run / "rl"
    lines = (out / "rl.log").read_text().splitlines()
    assert lines[0].startswith("step\treward_mean") and [ln.split("\t")[0] for ln in lines[1:]] == ["0", "1"]
    assert (out / "model_000002.pt").exists() and json.loads((out / "eval_000002.json").read_text())["step"] == 2
    held = {s: json.loads((out / f"eval_{s:06d}.json").read_text()) for s in (0, 2)}
    # the final policy through evaluate: val loss on the pre-training val shard and HellaSwag, as a checkpoint's
    final = json.loads((out / "evaluate_000002.json").read_text())
    pretrained = json.loads((run / "eval" / "step_000006.json").read_text())
    assert final["step"] == 2 and final["checkpoint"].endswith("rl/model_000002.pt")
    # two steps at rl.learning_rate 1.41e-5 barely move this tiny policy: the same val shard, budget and sequence
    # length as the pre-trained checkpoint's evaluation give (nearly) its val loss
    assert 0 < final["val_loss"] < 11 and final["val_loss"] == pytest.approx(pretrained["val_loss"], abs=1e-3)
    assert final["hellaswag_examples"] == 8 and 0 <= final["hellaswag_acc_norm"] <= 1
    # the report: metrics.tsv's rl rows hold those numbers, the figure a second row, the notebook the table and
    # the samples side by side, rl_samples.md the same prompts' responses before and after
    header, *rows = (run / "metrics.tsv").read_text().splitlines()
    metrics = [dict(zip(header.split("\t"), row.split("\t"))) for row in rows]
    assert [(m["stage"], m["step"]) for m in metrics] == [("train", "3"), ("train", "6"), ("rl", "0"), ("rl", "2")]
    assert float(metrics[2]["val_loss"]) == pytest.approx(pretrained["val_loss"], abs=1e-6)
    assert float(metrics[3]["val_loss"]) == pytest.approx(final["val_loss"], abs=1e-6)
    assert float(metrics[3]["reward"]) == pytest.approx(held[2]["reward"]["mean"], abs=1e-6)
    assert float(metrics[3]["kl"]) == pytest.approx(held[2]["kl"]["mean"], abs=1e-6)
    assert metrics[3]["held_out_prompts"] == "2"
    assert int.from_bytes((run / "output.png").read_bytes()[20:24], "big") == 2 * png_height
    shown = json.dumps(json.loads((run / "report.ipynb").read_text()), ensure_ascii=False)
    assert "RL: the pre-trained model and the final policy" in shown and "| RL step 2 | " in shown
    side = (run / "rl_samples.md").read_text()
    pairs = list(zip(held[0]["samples"], held[2]["samples"]))
    assert len(pairs) == 2 and all(b["prompt"] == a["prompt"] for b, a in pairs)
    assert side.count("\n| ") == 1 + len(pairs) and "| prompt | pre-trained (step 0) | RL step 2 |" in side
    assert f"({pairs[0][0]['reward']:.3f}) |" in side and f"({pairs[0][1]['reward']:.3f}) |" in side
    assert planned_jobs(workdir, configfile="rl.yaml") == {}
    # deleted RL outputs come back through results/output.png: the held-out result of step 0 is made again
    # (from the reference: the same numbers), the final policy evaluated again, the report redrawn
    (out / "eval_000000.json").unlink()
    (out / "evaluate_000002.json").unlink()
    assert {"rl", "rl_evaluate", "report", "latest"} <= set(
        planned_jobs(workdir, f"{RESULTS}/output.png", configfile="rl.yaml"))
    snakemake(workdir, f"{RESULTS}/output.png", configfile="rl.yaml")
    assert json.loads((out / "eval_000000.json").read_text()) == held[0]
    assert json.loads((out / "evaluate_000002.json").read_text())["val_loss"] == final["val_loss"]
    assert "resuming at step 2" in (run / "logs" / "rl.log").read_text()  # nothing trained again
    assert planned_jobs(workdir, f"{RESULTS}/output.png", configfile="rl.yaml") == {}
    assert planned_jobs(workdir, configfile="rl.yaml") == {}
    cfg["rl"]["temperature"] = 1.0
    (workdir / "rl.yaml").write_text(yaml.safe_dump(cfg))
    assert planned_jobs(workdir, configfile="rl.yaml") == rl_jobs
    assert "train" not in planned_jobs(workdir)  # back without RL: nothing is retrained


def test_with_rl_init_from_the_start_is_evaluated_as_the_final_policy_is(tmp_path):
    """rl.init_from: the model RL starts from is not the run's final checkpoint (evaluated anyway), so the report's
    pre-trained side comes from rl_evaluate's step 0 on it, scored the same way (a plan: nothing runs)."""
    cfg = tiny_config(tmp_path)
    cfg["results_dir"] = "results"
    cfg["rl"] = {"init_from": "results/tiny/train/model_000003.pt", "steps": 2, "batch_size": 4, "mini_batch_size": 4,
                 "forward_batch": 4, "max_new_tokens": 4, "prompt_tokens": 4, "num_prompts": 8, "eval_prompts": 2,
                 "checkpoint_every": 2}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert planned_jobs(tmp_path)["rl_evaluate"] == 2
    plan = snakemake(tmp_path, "--dry-run", "--quiet", "host")  # every job, with its command
    assert ("evaluate -c results/tiny/config/evaluate.yaml --checkpoint results/tiny/train/model_000003.pt "
            "--own-shape") in plan and "--out results/tiny/rl/evaluate_000000.json" in plan
    assert "--rl-evaluated results/tiny/rl/evaluate_000000.json results/tiny/rl/evaluate_000002.json" in plan
    assert not (tmp_path / "results").exists()


def test_a_reward_model_section_trains_it_and_rl_scores_with_it(workdir):
    """A reward_model: section adds `gpt2pipe reward-model` (pairs: sentiment, made from the run's own
    continuations), and rl.reward reward_model makes RL wait for it and score with it; training is not redone,
    a deleted reward-model output is rebuilt through the plot, and a reward-model setting reruns the reward
    model and RL alone (each stage's config rule names it)."""
    snakemake(workdir)  # a finished run; rl_state/ keeps the previous test's RL state, which RL sets aside
    cfg = yaml.safe_load((workdir / "config.yaml").read_text())
    cfg["reward_model"] = {"pairs": "sentiment", "num_prompts": 64, "pairs_per_prompt": 1, "prompt_tokens": 4, "response_tokens": 8,
                           "margin": 0.0, "eval_pairs": 4, "batch_size": 4, "forward_batch": 4, "max_tokens": 16}
    cfg["rl"] = {"reward": "reward_model", "value_from_reward_model": True, "steps": 2, "batch_size": 4,
                 "mini_batch_size": 4, "forward_batch": 4, "max_new_tokens": 4, "prompt_tokens": 4, "num_prompts": 8,
                 "eval_prompts": 2, "checkpoint_every": 2, "ppo_epochs": 1}
    (workdir / "rm.yaml").write_text(yaml.safe_dump(cfg))
    jobs = {"reward_model_config": 1, "rl_config": 1, "reward_model": 1, "rl": 1, "rl_evaluate": 1, "run_config": 1,
            "report": 1, "latest": 1}
    assert planned_jobs(workdir, configfile="rm.yaml") == jobs
    snakemake(workdir, configfile="rm.yaml")
    run = workdir / RESULTS / "tiny"
    result = json.loads((run / "reward_model" / "eval.json").read_text())
    assert result["held_out"]["n"] >= 1 and result["steps"] >= 1
    assert len((run / "reward_model" / "reward_model.log").read_text().splitlines()) == result["steps"] + 1
    assert (run / "reward_model" / "pairs.jsonl").exists()
    rl_log = (run / "logs" / "rl.log").read_text()
    assert "reward reward_model" in rl_log and "has other settings" in rl_log and "kept in" in rl_log
    assert planned_jobs(workdir, configfile="rm.yaml") == {}
    # a deleted reward-model output comes back through the plot too (common.run_products lists it)
    (run / "reward_model" / "reward_model.log").unlink()
    assert "reward_model" in planned_jobs(workdir, f"{RESULTS}/output.png", configfile="rm.yaml")
    cfg["reward_model"]["learning_rate"] = 1e-3
    (workdir / "rm.yaml").write_text(yaml.safe_dump(cfg))
    plan = snakemake(workdir, "--dry-run", configfile="rm.yaml")
    assert "reward_model settings changed since" in plan and "reward_model.learning_rate: " in plan
    assert set(planned_jobs(workdir, configfile="rm.yaml")) == set(jobs)


# --- everyday use of the .test run: changed settings, deleted outputs, the plan, failures, the report -------

@pytest.fixture(scope="module")
def dot_test(tmp_path_factory):
    """.test/ copied as it is (its config/config.yaml is the workflow's default config there), built through
    the quick start's target."""
    import shutil

    wd = tmp_path_factory.mktemp("dot") / "t"
    shutil.copytree(ROOT / ".test", wd)
    snakemake(wd, "results/output.png", configfile="config/config.yaml")
    return wd


def set_learning_rate(wd, value):
    path = wd / "config" / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["train"]["learning_rate"] = value
    path.write_text(yaml.safe_dump(cfg))


def test_deleted_outputs_come_back_through_the_plot(dot_test):
    """Snakemake leaves a deleted intermediate alone while what is made from it is up to date: asked for through
    results/output.png, a deleted eval result and a deleted checkpoint are rebuilt and the plot redrawn."""
    run, png = dot_test / "results" / "tiny", dot_test / "results" / "output.png"
    before = png.stat().st_mtime_ns
    (run / "eval" / "step_000003.json").unlink()
    assert planned_jobs(dot_test, "results/output.png", configfile="config/config.yaml") == {
        "evaluate": 1, "report": 1, "latest": 1}
    snakemake(dot_test, "results/output.png", configfile="config/config.yaml")
    assert json.loads((run / "eval" / "step_000003.json").read_text())["step"] == 3
    assert png.stat().st_mtime_ns != before
    before = png.stat().st_mtime_ns
    (run / "train" / "model_000003.pt").unlink()
    assert {"train", "evaluate", "report", "latest"} <= set(
        planned_jobs(dot_test, "results/output.png", configfile="config/config.yaml"))
    snakemake(dot_test, "results/output.png", configfile="config/config.yaml")
    assert (run / "train" / "model_000003.pt").exists() and png.stat().st_mtime_ns != before
    assert "nothing trained" in (run / "logs" / "train.log").read_text()  # the finished run republished it
    assert planned_jobs(dot_test, "results/output.png", configfile="config/config.yaml") == {}
    assert planned_jobs(dot_test, configfile="config/config.yaml") == {}


def test_a_changed_setting_retrains_by_itself_and_going_back_resumes(dot_test):
    """train.learning_rate changed: the plan names it in a screen, the next run retrains from step 0 with rc 0
    and keeps the first run's states; the old value back resumes them (nothing trained, the first log back)."""
    run = dot_test / "results" / "tiny"
    first = (run / "train" / "train.log").read_text()
    set_learning_rate(dot_test, 0.002)
    plan = snakemake(dot_test, "--dry-run", configfile="config/config.yaml")  # as typed: the default profile
    assert len(plan.splitlines()) < 60, plan
    assert "train settings changed since results/tiny/config/train.yaml was written: " \
           "train.learning_rate: 0.003 -> 0.002" in plan
    assert re.search(r"^train\s+1$", plan, re.M) and re.search(r"^evaluate\s+2$", plan, re.M)  # which jobs
    assert re.search(r"params have changed since last execution:\n\s+.*\btrain_config\b", plan), plan  # and why
    jobs = snakemake(dot_test, "--dry-run", "--quiet", "host", configfile="config/config.yaml")  # job by job
    assert "before: 'train.learning_rate=0.003' now: 'train.learning_rate=0.002'" in jobs
    assert "run_name: tiny" not in jobs and "written by the workflow" not in jobs  # no YAML document in params
    assert "rule train:" in jobs and "rule train:" not in plan
    snakemake(dot_test, configfile="config/config.yaml")
    second = (run / "train" / "train.log").read_text()
    assert second != first and [ln for ln in second.splitlines() if " trl:" in ln][0].startswith("s:0 ")
    log = (run / "logs" / "train.log").read_text()
    assert "has other settings (train.learning_rate: 0.003 -> 0.002): kept in" in log
    assert "\r" not in log and "\r" not in (run / "logs" / "evaluate_000003.log").read_text()  # lines, no redraws
    set_learning_rate(dot_test, 0.003)
    snakemake(dot_test, configfile="config/config.yaml")
    assert (run / "train" / "train.log").read_text() == first
    log = (run / "logs" / "train.log").read_text()
    assert "resuming it" in log and "nothing trained" in log
    kept = list((run / "train_state" / "other").iterdir())
    assert len(kept) == 1 and (kept[0] / "train.log").read_text() == second
    assert planned_jobs(dot_test, configfile="config/config.yaml") == {}


def test_the_report_command_as_documented_works_for_your_own_run(dot_test):
    """`snakemake --report report.html --configfile=FILE`, with the config the run was built with, reports that
    run; without it Snakemake reports the run of the default config."""
    cfg = yaml.safe_load((dot_test / "config" / "config.yaml").read_text())
    cfg["run_name"] = "mine"
    (dot_test / "my-run.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(dot_test, "results/output.png", configfile="my-run.yaml")
    snakemake(dot_test, "--report", "report.html", configfile="my-run.yaml")
    html = (dot_test / "report.html").read_text(errors="replace")
    assert "results/mine/output.png" in html and "results/tiny/output.png" not in html


def test_a_failed_job_ends_the_output_with_its_error_line(tmp_path):
    cfg = tiny_config(tmp_path)
    (tmp_path / "corpus.txt").write_text("")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    out = snakemake(tmp_path, check=False)
    tail = out.strip().splitlines()[-6:]
    assert any(ln.startswith("corpus failed: gpt2pipe corpus: error: data.paths: ") and "holds no text" in ln
               for ln in tail), tail
