rule report:
    """Execute the report notebook with papermill: loss and HellaSwag curves with GPT-2/GPT-3 baselines."""
    input:
        notebook=workflow.source_path("../notebooks/report.ipynb"),
        train_log=f"{RUN}/train/train.log",
        evals=[f"{RUN}/eval/step_{s:06d}.json" for s in checkpoint_steps()],
    output:
        png=report(f"{RUN}/output.png", caption="../report/output.rst", category="Results"),
        notebook=f"{RUN}/report.ipynb",
        metrics=report(f"{RUN}/metrics.tsv", caption="../report/metrics.rst", category="Results"),
    params:
        cli=GPT2PIPE,
        config=CONFIG_FILE,
        report=section_hash("report"),
    resources:
        mem_mb=RES["job_mem_mb"],
        runtime=RES["job_runtime"],
    log:
        f"{RUN}/logs/report.log",
    benchmark:
        f"{RUN}/benchmarks/report.tsv"
    conda:
        CONDA_ENV
    shell:
        "{params.cli} report -c {params.config} --notebook {input.notebook} --train-log {input.train_log}"
        " --evals {input.evals} --out {output.png} --notebook-out {output.notebook} --metrics {output.metrics}"
        " > {log} 2>&1"


rule latest:
    """results/output.png (and the executed notebook beside it) are the configured run's report."""
    input:
        png=rules.report.output.png,
        notebook=rules.report.output.notebook,
    output:
        png=f"{RESULTS}/output.png",
        notebook=f"{RESULTS}/report.ipynb",
    log:
        f"{RUN}/logs/latest.log",
    localrule: True
    conda:
        CONDA_ENV
    shell:
        "cp {input.png} {output.png} && cp {input.notebook} {output.notebook} 2> {log}"
