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


if "rl" in config:

    rule rl_evaluate:
        """Validation loss (on the pre-training val shard: what the policy gave up) and HellaSwag of the RL
        stage's final policy, and with rl.init_from of the model RL started from (step 0; otherwise the report
        takes the run's final checkpoint's eval result), as rule evaluate scores the training checkpoints:
        rl/evaluate_NNNNNN.json, beside the RL stage's own held-out reward and KL (rl/eval_NNNNNN.json). The
        model's shape comes from the checkpoint (rl.init_from's)."""
        input:
            config=f"{RUN}/config/evaluate.yaml",
            # step 0: what the rl rule starts from (rl.smk is read after this file; the function runs later)
            checkpoint=lambda wildcards: (rules.rl.input.init if int(wildcards.step) == 0
                                          else f"{RUN}/rl/model_{wildcards.step}.pt"),
            shards=rules.tokenize.output[0],
            hellaswag=rules.hellaswag.output[0],
        output:
            f"{RUN}/rl/evaluate_{{step}}.json",
        params:
            cli=GPT2PIPE,
        threads: RES["data_cpus"]
        resources:
            gpu=RES["eval_gpus"],
            mem_mb=RES["job_mem_mb"],
            runtime=RES["job_runtime"],
        log:
            f"{RUN}/logs/rl_evaluate_{{step}}.log",
        benchmark:
            f"{RUN}/benchmarks/rl_evaluate_{{step}}.tsv"
        conda:
            CONDA_ENV
        shell:
            "{params.cli} evaluate -c {input.config:q} --checkpoint {input.checkpoint:q} --own-shape"
            " --shards {input.shards:q} --hellaswag {input.hellaswag:q} --out {output:q} > {log:q} 2>&1"
