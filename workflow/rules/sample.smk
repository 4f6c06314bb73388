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
        n=config["eval"]["samples"],
        tokens=config["eval"]["sample_tokens"],
        temperature=config["eval"]["sample_temperature"],
        top_k=config["eval"]["sample_top_k"],
        prompt=config["eval"]["sample_prompt"],
        seed=config["train"]["seed"],
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
        "{params.cli} sample --checkpoint {input.checkpoint} --num-samples {params.n}"
        " --max-new-tokens {params.tokens} --temperature {params.temperature} --top-k {params.top_k}"
        " --prompt={params.prompt:q} --seed {params.seed} --out {output} > {log} 2>&1"
