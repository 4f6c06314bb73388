rule evaluate:
    """Validation loss and HellaSwag of one checkpoint (one job per checkpoint, cached separately)."""
    input:
        config=f"{RUN}/config/evaluate.yaml",
        checkpoint=f"{RUN}/train/model_{{step}}.pt",
        shards=rules.tokenize.output[0],
        hellaswag=rules.hellaswag.output[0],
    output:
        f"{RUN}/eval/step_{{step}}.json",
    params:
        cli=GPT2PIPE,
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
        "{params.cli} evaluate -c {input.config:q} --checkpoint {input.checkpoint:q} --shards {input.shards:q}"
        " --hellaswag {input.hellaswag:q} --out {output:q} > {log:q} 2>&1"
