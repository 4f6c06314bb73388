# The config files the jobs read, written by rules (never while the Snakefile is parsed). Each holds only
# what decides its stages' outputs (gpt2pipe.layout.stage_config), and Snakemake reruns a job whose config
# file changed: the data stages depend on the data section alone, so runs with the same data: section
# share one dataset and a second run never makes the first rebuild or retrain anything.
# Their params are one `key=value` string per setting, not the YAML text: Snakemake's "params have changed"
# reason then names the settings that changed, and only them.


rule data_config:
    """The data section a dataset is built from (shared by every run that names this dataset)."""
    output:
        f"{DATA}/config.yaml",
    params:
        *layout.settings(layout.stage_config(config, "data")),
    log:
        f"{DATA}/logs/data_config.log",
    benchmark:
        f"{DATA}/benchmarks/data_config.tsv"
    localrule: True
    run:
        write_stage_config(output[0], "data")


rule run_config:
    """The run's resolved config (defaults filled in): the record of the run, and what the report reads."""
    output:
        f"{RUN}/config.yaml",
    params:
        *layout.settings(layout.stage_config(config, "report")),
    log:
        f"{RUN}/logs/run_config.log",
    benchmark:
        f"{RUN}/benchmarks/run_config.tsv"
    localrule: True
    run:
        write_stage_config(output[0], "report")


# One rule per stage (not one with a {stage} wildcard): a rule's params are fixed when it is defined, and
# they must be one string per setting of that stage.
for _stage in (["train", "evaluate"] + (["reward_model"] if "reward_model" in config else [])
               + (["rl"] if "rl" in config else [])):

    rule:
        """The part of the run config that the train, evaluate, reward_model or rl stage depends on."""
        name:
            f"{_stage}_config"
        output:
            f"{RUN}/config/{_stage}.yaml",
        params:
            *layout.settings(layout.stage_config(config, _stage)),
        log:
            f"{RUN}/logs/{_stage}_config.log",
        benchmark:
            f"{RUN}/benchmarks/{_stage}_config.tsv"
        localrule: True
        run:
            write_stage_config(output[0], Path(output[0]).stem)  # the stage, from its file name
