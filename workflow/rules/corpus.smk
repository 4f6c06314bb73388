rule corpus:
    """Gather the corpus (local text/parquet, or FineWeb parquet files) into parquet documents."""
    input:
        [] if config["data"]["source"] == "fineweb" else config["data"]["paths"],
    output:
        directory(f"{DATA}/corpus"),
    params:
        cli=GPT2PIPE,
        config=CONFIG_FILE,
        data=section_hash("data"),
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
        "{params.cli} corpus -c {params.config} --out {output} > {log} 2>&1"
