# FineWeb file by file: list the subset once (a checkpoint: the file count is known only then), then one
# download job and one tokenize job per parquet file, each cached on its own, then the shards.
# With data.max_tokens, files are taken in order only until they hold enough tokens.
HUB_KEYS = {k: config["data"][k] for k in ("hf_repo", "hf_subset", "hf_revision")}


wildcard_constraints:
    stem=r"[^/]+",


checkpoint fineweb_list:
    """Resolve data.hf_revision to a commit and list the subset's parquet files with sizes and sha256."""
    output:
        f"{FINEWEB}/files.json",
    params:
        cli=GPT2PIPE,
        config=CONFIG_FILE,
        hub=json.dumps(HUB_KEYS, sort_keys=True),
    resources:
        mem_mb=RES["job_mem_mb"],
        runtime=RES["job_runtime"],
    log:
        f"{DATA}/logs/fineweb_list.log",
    benchmark:
        f"{DATA}/benchmarks/fineweb_list.tsv"
    conda:
        CONDA_ENV
    shell:
        "{params.cli} fineweb list -c {params.config} --listing {output} > {log} 2>&1"


rule fineweb_download:
    """One parquet file through the hub cache (resumable), checked against the listed size and sha256."""
    input:
        f"{FINEWEB}/files.json",
    output:
        f"{FINEWEB}/raw/{{stem}}.parquet",
    params:
        cli=GPT2PIPE,
        config=CONFIG_FILE,
    resources:
        mem_mb=RES["job_mem_mb"],
        runtime=RES["job_runtime"],
    log:
        f"{DATA}/logs/fineweb_download/{{stem}}.log",
    benchmark:
        f"{DATA}/benchmarks/fineweb_download/{{stem}}.tsv"
    conda:
        CONDA_ENV
    shell:
        "{params.cli} fineweb download -c {params.config} --listing {input} --file {wildcards.stem} --out {output}"
        " > {log} 2>&1"


checkpoint fineweb_encode:
    """GPT-2 BPE of one whole parquet file, streamed into one token file, so it is reused whatever
    data.max_tokens is (a checkpoint: with max_tokens its token count decides whether the next file is needed)."""
    input:
        f"{FINEWEB}/raw/{{stem}}.parquet",
    output:
        f"{FINEWEB}/tokens/{{stem}}.bin",
    params:
        cli=GPT2PIPE,
        config=CONFIG_FILE,
    threads: RES["data_cpus"]
    resources:
        mem_mb=RES["job_mem_mb"],
        runtime=RES["job_runtime"],
    log:
        f"{DATA}/logs/fineweb_encode/{{stem}}.log",
    benchmark:
        f"{DATA}/benchmarks/fineweb_encode/{{stem}}.tsv"
    conda:
        CONDA_ENV
    shell:
        "{params.cli} encode -c {params.config} --input {input} --out {output} --set data.workers={threads}"
        " > {log} 2>&1"


rule tokenize:
    """Concatenate the per-file token files, in listing order, into llm.c shards (val first)."""
    input:
        fineweb_token_files,
    output:
        directory(f"{DATA}/shards"),
    params:
        cli=GPT2PIPE,
        config=CONFIG_FILE,
        data=section_hash("data"),
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
        "{params.cli} shard -c {params.config} --out {output} {input} > {log} 2>&1"
