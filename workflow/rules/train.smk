rule train:
    """Train; writes a model snapshot at every checkpoint step and the llm.c-format log.
    A failed or interrupted job resumes from <run>/train_state/ when rerun. After a change of a setting that
    changes the trained weights, the old states are kept in <run>/train_state/other/ and training starts from
    step 0; changing the setting back resumes them (--retrain-on-change, gpt2pipe.train.aside)."""
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
        gpu=RES["train_gpus"] * RES["train_nodes"],  # the plugin's --gpus=N: the whole job's GPUs
        # one node: ONE task, whose torchrun starts the per-GPU processes. The SLURM plugin turns `gpu` into
        # `--gpus=N` and, unless told otherwise, adds `--ntasks-per-gpu` (from tasks_per_gpu, or from tasks in
        # older releases), which starts the job step once per GPU (plugin issues #316, #459): both are 0 here,
        # so sbatch gets no task geometry (one task) and the step runs `srun -n1 --gpus=N` once.
        # Across nodes: one task per GPU, started by the rule's own srun. The `mpi` resource (present only
        # then: the plugin looks at the key, not its value) makes the plugin run this shell command in the batch
        # step itself, not inside a one-task `srun -n1` step that the rule's srun could not grow out of.
        tasks=RES["train_nodes"] * max(1, RES["train_gpus"]) if RES["train_nodes"] > 1 else 0,
        **({"mpi": "srun"} if RES["train_nodes"] > 1 else {}),
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
        " --retrain-on-change > {log:q} 2>&1"
