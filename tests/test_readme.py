"""The README's commands, taken from README.md verbatim: the quick start runs, the real recipe plans.

The install step (`scripts/install`) is what .ci/run executes on a clean checkout; here `.venv/bin/` points
at the interpreter running the tests, and the commands run in a scratch folder laid out like a clone."""

import os
import re
import subprocess
import sys
import time

import pytest

from conftest import ROOT

README = (ROOT / "README.md").read_text()


def bash_blocks() -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", README, re.S)]


def command(prefix: str) -> str:
    """The README command (continuation lines joined) that starts with `prefix`."""
    lines = [line for block in bash_blocks() for line in block.replace("\\\n", " ").splitlines()]
    found = [line for line in lines if line.startswith(prefix)]
    assert len(found) == 1, (prefix, found)
    return found[0]


@pytest.fixture
def clone(tmp_path):
    """A folder laid out like a fresh clone, with .venv/bin/{python,snakemake} running this interpreter."""
    for name in ("workflow", "config", "data", "src", "envs"):
        (tmp_path / name).symlink_to(ROOT / name)
    venv = tmp_path / ".venv" / "bin"
    venv.mkdir(parents=True)
    for name, module in (("python", ""), ("snakemake", "-m snakemake")):
        (venv / name).write_text(f'#!/bin/sh\nexec "{sys.executable}" {module} "$@"\n')
        (venv / name).chmod(0o755)
    return tmp_path


def run(cmd: str, cwd, timeout=900) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run(["bash", "-c", cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0, cmd + "\n" + r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout + r.stderr


def test_first_commands_install_then_run():
    blocks = bash_blocks()
    assert blocks[0] == "scripts/install && .venv/bin/snakemake --cores all results/output.png"
    assert blocks[1] == "scripts/install test && .venv/bin/python -m pytest"
    assert (ROOT / "scripts" / "install").stat().st_mode & 0o111


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert bash_blocks()[1] in ci


def test_real_recipe_plans(clone):
    """The GPT-2 124M command as written: its targets are not taken for config files (a dry run)."""
    cmd = command(".venv/bin/snakemake --cores all --configfile=config/gpt2-124M.yaml")
    out = run(cmd + " --dry-run", clone)
    for job in ("fineweb_list", "hellaswag", "train", "report", "latest"):
        assert re.search(rf"^{job}\s+1$", out, re.M), out[-3000:]
    assert not (clone / "results").exists()
    # the recipe is the whole config: nothing of the demo's config/config.yaml (e.g. its 32,768-token val
    # shard, which Snakemake would merge under a --configfile) reaches the FineWeb dataset. The config rule
    # writes it from a run: block (nothing to read in a dry run): built alone, it needs no download
    run(cmd.replace("results/output.png", "results/data/fineweb10B/config.yaml"), clone)
    written = (clone / "results" / "data" / "fineweb10B" / "config.yaml").read_text()
    assert re.search(r"^  name: fineweb10B$", written, re.M) and re.search(r"^  val_tokens: null$", written, re.M), written


def test_slurm_command_plans(clone):
    """The SLURM command as written, planned with the local profile (no cluster here)."""
    cmd = command(".venv/bin/snakemake --workflow-profile workflow/profiles/slurm")
    out = run(cmd.replace("profiles/slurm", "profiles/default") + " --dry-run", clone)
    assert re.search(r"^train\s+1$", out, re.M)


def cpu_seconds(results) -> float:
    """CPU time of every job, from the benchmark file Snakemake writes for each rule."""
    total = 0.0
    for tsv in results.rglob("benchmarks/**/*.tsv"):
        header, row = tsv.read_text().splitlines()[:2]
        total += float(dict(zip(header.split("\t"), row.split("\t")))["cpu_time"])
    return total


@pytest.mark.slow
def test_quick_start_as_written(clone):
    """The demo command verbatim, within 10 minutes of 2 cores, then the HTML report right after it. The
    limit is checked on the jobs' CPU time (wall time on a shared CI machine depends on its neighbours)."""
    install, demo = bash_blocks()[0].split(" && ")
    assert install == "scripts/install"
    start = time.monotonic()
    run(demo, clone, timeout=1800)
    wall = time.monotonic() - start
    assert (clone / "results" / "output.png").read_bytes()[:4] == b"\x89PNG"
    cpu = cpu_seconds(clone / "results")
    assert cpu / 2 < 600, f"the demo needs {cpu / 120:.1f} min of 2 cores ({wall / 60:.1f} min wall here)"
    assert "Nothing to be done" in run(demo, clone)
    run(".venv/bin/snakemake --report report.html", clone)
    assert "step_000150.txt" in (clone / "report.html").read_text(errors="replace")


# Links between the README and docs/: every relative link resolves (to a file, and to a heading when it names
# one), and every docs page can be reached from the README.
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where brackets are not links."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(page) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", prose(page.read_text()), re.M)
    return {re.sub(r"[^\w\- ]", "", h.replace("`", "").strip().lower()).replace(" ", "-") for h in headings}


def relative_links(page):
    """(target as written, the file it names) for each relative link of a markdown page."""
    for target in re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", prose(page.read_text())):
        if not re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: are not checked here
            path = target.split("#", 1)[0]
            yield target, (page.parent / path).resolve() if path else page


def test_links_between_readme_and_docs_resolve():
    broken = []
    for page in PAGES:
        for target, dest in relative_links(page):
            anchor = target.partition("#")[2]
            if not dest.exists() or (anchor and dest.suffix == ".md" and anchor not in anchors(dest)):
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken


def test_every_docs_page_is_reached_from_the_readme():
    seen, todo = set(), [ROOT / "README.md"]
    while todo:
        page = todo.pop()
        if page not in seen and page.suffix == ".md" and page.exists():
            seen.add(page)
            todo += [dest for _, dest in relative_links(page)]
    orphans = [p.relative_to(ROOT).as_posix() for p in PAGES if p not in seen]
    assert not orphans, f"not linked from the README or a page it links to: {orphans}"
