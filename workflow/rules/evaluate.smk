rule evaluate:
    """Validation loss and HellaSwag of one checkpoint (one job per checkpoint, cached separately)."""
    input:
        checkpoint=f"{RUN}/train/model_{{step}}.pt",
        shards=f"{DATA}/shards",
        hellaswag=HELLASWAG_BIN,
    output:
        f"{RUN}/eval/step_{{step}}.json",
    params:
        cli=GPT2PIPE,
        config=CONFIG_FILE,
        eval=section_hash("eval"),
    threads: RES["data_cpus"]
    resources:
        gpu=RES["eval_gpus"],
        mem_mb=RES["job_mem_mb"],
        runtime=RES["job_runtime"],
    log:
        f"{RUN}/logs/evaluate_{{step}}.log",
    benchmark:
        f"{RUN}/benchmarks/evaluate_{{step}}.tsv"
    conda:
        CONDA_ENV
    shell:
        "{params.cli} evaluate -c {params.config} --checkpoint {input.checkpoint} --shards {input.shards}"
        " --hellaswag {input.hellaswag} --out {output} > {log} 2>&1"
