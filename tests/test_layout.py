"""The repository's layout as the project card names it, and the rules finding their conda environment there."""

from pathlib import Path

from conftest import ROOT


def test_top_level_layout():
    for name in ("workflow", "src/gpt2pipe", "kernels", "config", "envs", "tests", "docs"):
        assert (ROOT / name).is_dir(), name
    assert (ROOT / "README.md").is_file()


def test_every_rule_uses_the_top_level_conda_env():
    """`snakemake --sdm conda` resolves a rule's `conda:` path against the file that defines the rule. The
    config rules alone write their file from a `run:` block, in Snakemake's own process (no conda there)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ResourceSettings

    with SnakemakeApi() as api:
        rules = api.workflow(resource_settings=ResourceSettings(cores=1),
                             snakefile=ROOT / "workflow" / "Snakefile", workdir=ROOT)._workflow.rules
        envs = {r.name: (Path(r.basedir.get_path_or_uri(True)) / r.conda_env).resolve() for r in rules if r.conda_env}
    assert "train" in envs and "rl" in envs
    assert set(envs.values()) == {ROOT / "envs" / "gpt2pipe.yaml"}, envs
    in_snakemake = {r.name for r in rules if r.shellcmd is None and not (r.script or r.notebook or r.wrapper)}
    assert in_snakemake - {"all"} and all(name.endswith("_config") for name in in_snakemake - {"all"}), in_snakemake
    assert {r.name for r in rules} - {"all"} - in_snakemake <= set(envs), "a rule without the conda env"
