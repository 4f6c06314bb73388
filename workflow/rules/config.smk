# The config files the jobs read, written by rules (never while the Snakefile is parsed). Each holds only
# what decides its stages' outputs (gpt2pipe.layout.stage_config), and Snakemake reruns a job whose config
# file changed: the data stages depend on the data section alone, so runs with the same data: section
# share one dataset and a second run never makes the first rebuild or retrain anything.


rule data_config:
    """The data section a dataset is built from (shared by every run that names this dataset)."""
    output:
        f"{DATA}/config.yaml",
    params:
        text=layout.stage_config_text(config, "data"),
        identity=DATA_ID,
    log:
        f"{DATA}/logs/data_config.log",
    benchmark:
        f"{DATA}/benchmarks/data_config.tsv"
    localrule: True
    conda:
        CONDA_ENV
    shell:
        "printf '%s' {params.text:q} > {output:q} 2> {log:q}"


rule run_config:
    """The run's resolved config (defaults filled in): the record of the run, and what the report reads."""
    output:
        f"{RUN}/config.yaml",
    params:
        text=layout.stage_config_text(config, "report"),
    log:
        f"{RUN}/logs/run_config.log",
    benchmark:
        f"{RUN}/benchmarks/run_config.tsv"
    localrule: True
    conda:
        CONDA_ENV
    shell:
        "printf '%s' {params.text:q} > {output:q} 2> {log:q}"


rule stage_config:
    """The part of the run config that the train, evaluate, rl or reward_model stage depends on."""
    output:
        f"{RUN}/config/{{stage}}.yaml",
    params:
        text=lambda wildcards: layout.stage_config_text(config, wildcards.stage),
    log:
        f"{RUN}/logs/{{stage}}_config.log",
    benchmark:
        f"{RUN}/benchmarks/{{stage}}_config.tsv"
    wildcard_constraints:
        stage="train|evaluate|rl|reward_model",
    localrule: True
    conda:
        CONDA_ENV
    shell:
        "printf '%s' {params.text:q} > {output:q} 2> {log:q}"
