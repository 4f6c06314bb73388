rule tokenize:
    """GPT-2 BPE in parallel processes -> llm.c shards, val shard first."""
    input:
        f"{DATA}/corpus",
    output:
        directory(f"{DATA}/shards"),
    params:
        cli=GPT2PIPE,
        config=CONFIG_FILE,
        data=section_hash("data"),
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
        "{params.cli} tokenize -c {params.config} --corpus {input} --out {output} --set data.workers={threads}"
        " > {log} 2>&1"
