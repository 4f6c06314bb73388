rule reward_model:
    """A reward model (GPT-2 trunk + scalar head, Bradley-Terry loss) trained from the run's final checkpoint,
    or reward_model.init_from, on reward_model.pairs: a .jsonl of {prompt, chosen, rejected}, or `sentiment`
    (the model's own continuations of val-shard prefixes, the more positive by VADER chosen). Writes model.pt,
    eval.json (held-out pair accuracy) and reward_model.log under <run>/reward_model/. Included when the config
    has a reward_model section; `rl.reward: reward_model` makes the rl rule wait for it."""
    input:
        config=f"{RUN}/config/reward_model.yaml",
        init=config["reward_model"]["init_from"] or str(layout.checkpoint(config, STEPS[-1])),
        shards=rules.tokenize.output[0],  # the val shard's prefixes are the prompts of pairs: sentiment
        pairs=[] if config["reward_model"]["pairs"] == "sentiment" else config["reward_model"]["pairs"],
    output:
        [str(p) for p in layout.reward_model_outputs(config)],
    params:
        cli=GPT2PIPE,
        run_dir=lambda wildcards, output: Path(output[0]).parent.parent,
    threads: RES["train_cpus_per_gpu"]
    resources:
        gpu=min(1, RES["train_gpus"]),
        mem_mb=RES["train_mem_mb"],
        runtime=RES["train_runtime"],
    log:
        f"{RUN}/logs/reward_model.log",
    benchmark:
        f"{RUN}/benchmarks/reward_model.tsv"
    conda:
        CONDA_ENV
    shell:
        "{params.cli} reward-model -c {input.config:q} --shards {input.shards:q} --run-dir {params.run_dir:q}"
        " --no-progress > {log:q} 2>&1"
