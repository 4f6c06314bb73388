rule hellaswag:
    """HellaSwag validation (vendored demo rows, the hash-checked download, or a file) -> llm.c eval .bin,
    shared by every run that names the same source."""
    input:
        [] if HELLASWAG_SOURCE in ("demo", "full") else HELLASWAG_SOURCE,
    output:
        HELLASWAG_BIN,
    params:
        cli=GPT2PIPE,
        source=HELLASWAG_SOURCE,
    resources:
        mem_mb=RES["job_mem_mb"],
        runtime=RES["job_runtime"],
    log:
        f"{RESULTS}/data/hellaswag/logs/{HELLASWAG_NAME}.log",
    benchmark:
        f"{RESULTS}/data/hellaswag/benchmarks/{HELLASWAG_NAME}.tsv"
    conda:
        CONDA_ENV
    shell:
        "{params.cli} hellaswag --source={params.source:q} --out {output:q} > {log:q} 2>&1"
