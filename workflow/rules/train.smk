rule train:
    """Train; writes a model snapshot at every checkpoint step and the llm.c-format log.
    A failed or interrupted job resumes from {RUN}/train_state/ when rerun."""
    input:
        shards=f"{DATA}/shards",
    output:
        [f"{RUN}/train/model_{s:06d}.pt" for s in checkpoint_steps()],
        log=f"{RUN}/train/train.log",
    params:
        cli=GPT2PIPE,
        config=CONFIG_FILE,
        run_dir=lambda wildcards, output: Path(output.log).parent.parent,
        setup=section_hash("model", "train", "data"),
    threads: workflow.cores
    log:
        f"{RUN}/logs/train.log",
    benchmark:
        f"{RUN}/benchmarks/train.tsv"
    conda:
        CONDA_ENV
    shell:
        "{params.cli} train -c {params.config} --shards {input.shards} --run-dir {params.run_dir} --resume"
        " > {log} 2>&1"
