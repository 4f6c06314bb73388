rule sample:
    """A few texts sampled from one checkpoint (seeded), for the report."""
    input:
        checkpoint=f"{RUN}/train/model_{{step}}.pt",
    output:
        report(
            f"{RUN}/samples/step_{{step}}.txt",
            caption="../report/samples.rst",
            category="Samples",
            labels={"step": "{step}"},
        ),
    params:
        cli=GPT2PIPE,
        n=lookup(dpath="eval/samples", within=config),
        tokens=lookup(dpath="eval/sample_tokens", within=config),
        temperature=lookup(dpath="eval/sample_temperature", within=config),
        top_k=lookup(dpath="eval/sample_top_k", within=config),
        prompt=lookup(dpath="eval/sample_prompt", within=config),
        seed=lookup(dpath="train/seed", within=config),
    resources:
        gpu=RES["eval_gpus"],
        mem_mb=RES["job_mem_mb"],
        runtime=RES["job_runtime"],
    log:
        f"{RUN}/logs/sample_{{step}}.log",
    benchmark:
        f"{RUN}/benchmarks/sample_{{step}}.tsv"
    conda:
        CONDA_ENV
    shell:
        "{params.cli} sample --checkpoint {input.checkpoint:q} --num-samples {params.n:q}"
        " --max-new-tokens {params.tokens:q} --temperature {params.temperature:q} --top-k {params.top_k:q}"
        " --prompt={params.prompt:q} --seed {params.seed:q} --out {output:q} > {log:q} 2>&1"
