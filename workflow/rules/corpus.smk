rule corpus:
    """Gather the corpus (local text or parquet files) into parquet documents."""
    input:
        config=rules.data_config.output[0],
        paths=config["data"]["paths"],
    output:
        directory(f"{DATA}/corpus"),
    params:
        cli=GPT2PIPE,
        identity=DATA_ID,
    resources:
        mem_mb=RES["job_mem_mb"],
        runtime=RES["job_runtime"],
    log:
        f"{DATA}/logs/corpus.log",
    benchmark:
        f"{DATA}/benchmarks/corpus.tsv"
    conda:
        CONDA_ENV
    shell:
        "{params.cli} corpus -c {input.config:q} --out {output:q} > {log:q} 2>&1"
