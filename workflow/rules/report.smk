RL = "rl" in config  # the report also draws the RL stage


rule report:
    """Execute the report notebook with papermill: loss and HellaSwag curves with GPT-2/GPT-3 baselines
    (and the runs of report.compare_runs on the same axes). With an rl section also the RL panels (reward and
    KL per step, reward against KL), the pre-trained model beside the final policy, and their responses side by
    side (rl_samples.md)."""
    input:
        config=rules.run_config.output[0],
        notebook=str(layout.report_notebook()),
        train_log=rules.train.output.log,
        evals=expand(rules.evaluate.output[0], step=[f"{s:06d}" for s in STEPS]),
        # rl.log, the held-out results the rl rule declares (the report also reads those beside them), and val
        # loss and HellaSwag of the model RL started from and of its final policy (rules evaluate, rl_evaluate)
        rl_log=str(layout.rl_dir(config) / "rl.log") if RL else [],
        rl_held_out=[str(p) for p in layout.rl_outputs(config) if p.suffix == ".json"] if RL else [],
        rl_evaluated=[str(p) for p in layout.rl_evaluations(config)] if RL else [],
    output:
        png=report(f"{RUN}/output.png", caption="../report/output.rst", category="Results"),
        notebook=f"{RUN}/report.ipynb",
        metrics=report(f"{RUN}/metrics.tsv", caption="../report/metrics.rst", category="Results"),
        **({"rl_samples": report(f"{RUN}/rl_samples.md", caption="../report/rl_samples.rst", category="Results")}
           if RL else {}),
    params:
        cli=GPT2PIPE,
        compared=compared_runs_signature(),
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
        "{params.cli} report -c {input.config:q} --notebook {input.notebook:q} --train-log {input.train_log:q}"
        " --evals {input.evals:q} --out {output.png:q} --notebook-out {output.notebook:q}"
        " --metrics {output.metrics:q}"
        + (" --rl-log {input.rl_log:q} --rl-evaluated {input.rl_evaluated:q} --rl-samples {output.rl_samples:q}"
           if RL else "")
        + " > {log:q} 2>&1"


rule latest:
    """results/output.png (and the executed notebook beside it) are the configured run's report. The
    samples come along, so that `snakemake --report` works right after `snakemake results/output.png`, and so
    does every other output of the run: a deleted one is rebuilt through this target (common.redraw_number)."""
    input:
        png=rules.report.output.png,
        notebook=rules.report.output.notebook,
        samples=expand(rules.sample.output[0], step=[f"{s:06d}" for s in STEPS]) if config["eval"]["samples"] else [],
        outputs=run_products(),
    output:
        png=f"{RESULTS}/output.png",
        notebook=f"{RESULTS}/report.ipynb",
    params:
        redraw=redraw_number(),
    log:
        f"{RUN}/logs/latest.log",
    benchmark:
        f"{RUN}/benchmarks/latest.tsv"
    localrule: True
    conda:
        CONDA_ENV
    shell:
        "(cp {input.png:q} {output.png:q} && cp {input.notebook:q} {output.notebook:q}"
        " && echo redraw {params.redraw:q}) > {log:q} 2>&1"
