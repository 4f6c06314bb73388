rule train:
    """Train; writes a model snapshot at every checkpoint step and the llm.c-format log.
    A failed or interrupted job resumes from <run>/train_state/ when rerun."""
    input:
        config=f"{RUN}/config/train.yaml",
        shards=rules.tokenize.output[0],
    output:
        [str(layout.checkpoint(config, s)) for s in STEPS],
        log=f"{RUN}/train/train.log",
    params:
        cli=train_launcher(),
        run_dir=lambda wildcards, output: Path(output.log).parent.parent,
        identity=TRAIN_ID,
    threads: RES["train_cpus_per_gpu"] * max(1, RES["train_gpus"])  # capped at --cores locally
    resources:
        nodes=RES["train_nodes"],
        gpu=RES["train_gpus"],
        # one task (torchrun starts the per-GPU processes) on one node; one task per GPU across nodes
        tasks=RES["train_nodes"] * max(1, RES["train_gpus"]) if RES["train_nodes"] > 1 else 1,
        tasks_per_gpu=1 if RES["train_nodes"] > 1 else 0,
        cpus_per_task=RES["train_cpus_per_gpu"] * (max(1, RES["train_gpus"]) if RES["train_nodes"] == 1 else 1),
        mem_mb=RES["train_mem_mb"],
        runtime=RES["train_runtime"],
    log:
        f"{RUN}/logs/train.log",
    benchmark:
        f"{RUN}/benchmarks/train.tsv"
    conda:
        CONDA_ENV
    shell:
        "{params.cli} train -c {input.config:q} --shards {input.shards:q} --run-dir {params.run_dir:q} --resume"
        " > {log:q} 2>&1"
