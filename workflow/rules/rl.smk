rule rl:
    """RL fine-tuning (PPO or GRPO) of the run's final checkpoint, or of rl.init_from: the policy's
    checkpoints, rl.log, held-out reward and KL (eval_NNNNNN.json) and samples under <run>/rl/. Included when
    the config has an rl section. A failed or interrupted job resumes from <run>/rl_state/ when rerun; states
    of other settings, or from other starting weights or another reward model, are kept in
    <run>/rl_state/other/ (as train's)."""
    input:
        config=f"{RUN}/config/rl.yaml",
        init=config["rl"]["init_from"] or str(layout.checkpoint(config, STEPS[-1])),
        shards=rules.tokenize.output[0],  # the val shard's prefixes are the prompts unless rl.prompts names a file
        prompts=config["rl"]["prompts"] or [],
        # rl.reward reward_model (or a value model started from it): rl.reward_model, or this run's, trained first
        reward_model=(config["rl"]["reward_model"] or str(layout.reward_model_checkpoint(config)))
        if config["rl"]["reward"] == "reward_model" or config["rl"]["value_from_reward_model"]
        else [],
    output:
        [str(p) for p in layout.rl_outputs(config)],
    params:
        cli=GPT2PIPE,
        run_dir=lambda wildcards, output: Path(output[0]).parent.parent,
    threads: RES["train_cpus_per_gpu"]
    resources:
        gpu=min(1, RES["train_gpus"]),
        mem_mb=RES["train_mem_mb"],
        runtime=RES["train_runtime"],
    log:
        f"{RUN}/logs/rl.log",
    benchmark:
        f"{RUN}/benchmarks/rl.tsv"
    conda:
        CONDA_ENV
    shell:
        "{params.cli} rl -c {input.config:q} --shards {input.shards:q} --run-dir {params.run_dir:q} --resume"
        " --retrain-on-change --no-progress"
        " > {log:q} 2>&1"
