rule train:
    """Train; writes a model snapshot at every checkpoint step and the llm.c-format log.
    A failed or interrupted job resumes from {RUN}/train_state/ when rerun."""
    input:
        shards=f"{DATA}/shards",
    output:
        [f"{RUN}/train/model_{s:06d}.pt" for s in checkpoint_steps()],
        log=f"{RUN}/train/train.log",
    params:
        cli=train_launcher(),
        config=CONFIG_FILE,
        run_dir=lambda wildcards, output: Path(output.log).parent.parent,
        setup=section_hash("model", "train", "data"),
    threads: RES["train_cpus_per_gpu"] * max(1, RES["train_gpus"])  # capped at --cores locally
    resources:
        nodes=RES["train_nodes"],
        gpu=RES["train_gpus"],
        # one node: ONE task, whose torchrun starts the per-GPU processes. The SLURM plugin turns `gpu` into
        # `--gpus=N` and, unless told otherwise, adds `--ntasks-per-gpu` (from tasks_per_gpu, or from tasks in
        # older releases), which starts the job step once per GPU (plugin issues #316, #459): both are 0 here,
        # so sbatch gets no task geometry (one task) and the step runs `srun -n1 --gpus=N` once.
        # Across nodes: one task per GPU, started by the rule's own srun.
        tasks=RES["train_nodes"] * max(1, RES["train_gpus"]) if RES["train_nodes"] > 1 else 0,
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
        "{params.cli} train -c {params.config} --shards {input.shards} --run-dir {params.run_dir} --resume"
        " > {log} 2>&1"
