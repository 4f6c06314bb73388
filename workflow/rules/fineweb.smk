# FineWeb file by file: list the subset once (a checkpoint: the file count is known only then), then one
# download job and one tokenize job per parquet file, each cached on its own, then the shards.
# With data.max_tokens, files are taken in order only until they hold enough tokens. The listing, the
# downloads and the token files depend on the hub keys alone (passed as quoted --set values), so changing
# max_tokens or the shard size reuses every file already fetched and encoded.
HUB_SETS = [a for k in ("hf_repo", "hf_subset", "hf_revision")
            for a in ("--set", f"data.{k}={json.dumps(config['data'][k])}")]


wildcard_constraints:
    stem=r"[^/]+",


checkpoint fineweb_list:
    """Resolve data.hf_revision to a commit and list the subset's parquet files with sizes and sha256."""
    output:
        f"{FINEWEB}/files.json",
    params:
        cli=GPT2PIPE,
        hub=HUB_SETS,
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
        "{params.cli} fineweb list {params.hub:q} --listing {output:q} > {log:q} 2>&1"


rule fineweb_download:
    """One parquet file through the hub cache (resumable), checked against the listed size and sha256."""
    input:
        rules.fineweb_list.output[0],
    output:
        f"{FINEWEB}/raw/{{stem}}.parquet",
    params:
        cli=GPT2PIPE,
        hub=HUB_SETS,
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
        "{params.cli} fineweb download {params.hub:q} --listing {input:q} --file={wildcards.stem:q}"
        " --out {output:q} > {log:q} 2>&1"


checkpoint fineweb_encode:
    """GPT-2 BPE of one whole parquet file, streamed into one token file, so it is reused whatever
    data.max_tokens is (a checkpoint: with max_tokens its token count decides whether the next file is needed)."""
    input:
        rules.fineweb_download.output[0],
    output:
        f"{FINEWEB}/tokens/{{stem}}.bin",
    params:
        cli=GPT2PIPE,
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
        "{params.cli} encode --input {input:q} --out {output:q} --set data.workers={threads} > {log:q} 2>&1"


rule tokenize:
    """Concatenate the per-file token files, in listing order, into llm.c shards (val first)."""
    input:
        config=rules.data_config.output[0],
        tokens=fineweb_token_files,
    output:
        directory(f"{DATA}/shards"),
    params:
        cli=GPT2PIPE,
        identity=DATA_ID,
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
        "{params.cli} shard -c {input.config:q} --out {output:q} {input.tokens:q} > {log:q} 2>&1"
