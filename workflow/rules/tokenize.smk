rule tokenize:
    """GPT-2 BPE in parallel processes -> llm.c shards, val shard first."""
    input:
        config=rules.data_config.output[0],
        corpus=rules.corpus.output[0],
    output:
        directory(f"{DATA}/shards"),
    params:
        cli=GPT2PIPE,
        identity=DATA_ID,
    threads: RES["data_cpus"]  # capped at --cores when run locally
    resources:
        mem_mb=RES["job_mem_mb"],
        runtime=RES["job_runtime"],
    log:
        f"{DATA}/logs/tokenize.log",
    benchmark:
        f"{DATA}/benchmarks/tokenize.tsv"
    conda:
        CONDA_ENV
    shell:
        "{params.cli} tokenize -c {input.config:q} --corpus {input.corpus:q} --out {output:q}"
        " --set data.workers={threads} > {log:q} 2>&1"
