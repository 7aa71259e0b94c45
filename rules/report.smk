# Report: reproduction checks, cost, the provenance manifest and the self-contained HTML report.
# Nothing here feeds a training or evaluation stage; every rule reads what the others built.


include: "report_inputs.smk"


rule reproduction_table:
    input:
        expectation_metric_files,
    output:
        tsv=report(
            f"{RESULTS}/tables/reproduction.tsv",
            caption="../reports/captions/reproduction.rst",
            category="Reproduction",
            labels={"table": "reproduction", "format": "TSV"},
        ),
        markdown=f"{RESULTS}/tables/reproduction.md",
    log:
        log_path("reproduction_table", "reproduction"),
    benchmark:
        benchmark_path("reproduction_table", "reproduction")
    localrule: True
    container:
        container_image("eval")
    threads: 1
    params:
        expectations=lambda wildcards: PLAN.get("expectations", []),
        results_dir=lambda wildcards, output: results_dir_of(
            output.tsv, "tables/reproduction.tsv"
        ),
    script:
        "../workflow_scripts/reproduction_table.py"


rule check:
    input:
        f"{RESULTS}/tables/reproduction.tsv",
    log:
        log_path("check", "reproduction"),
    localrule: True
    container:
        container_image("eval")
    threads: 1
    script:
        "../workflow_scripts/check_reproduction.py"


rule provenance_manifest:
    input:
        pipeline_targets(),
        f"{RESULTS}/tables/reproduction.tsv",
    output:
        manifest=f"{RESULTS}/provenance/manifest.json",
        markdown=f"{RESULTS}/provenance/manifest.md",
    log:
        log_path("provenance_manifest", "manifest"),
    benchmark:
        benchmark_path("provenance_manifest", "manifest")
    localrule: True
    container:
        container_image("eval")
    threads: 1
    params:
        provenance_dir=lambda wildcards, output: results_dir_of(
            output.manifest, "provenance/manifest.json", "provenance"
        ),
        containers=declared_containers,
    script:
        "../workflow_scripts/provenance_manifest.py"


rule cost_table:
    input:
        manifest=f"{RESULTS}/provenance/manifest.json",
    output:
        tsv=report(
            f"{RESULTS}/tables/cost.tsv",
            caption="../reports/captions/cost.rst",
            category="Cost",
            labels={"table": "cost", "format": "TSV"},
        ),
        markdown=f"{RESULTS}/tables/cost.md",
    log:
        log_path("cost_table", "cost"),
    benchmark:
        benchmark_path("cost_table", "cost")
    localrule: True
    container:
        container_image("eval")
    threads: 1
    params:
        benchmarks=lambda wildcards, output: results_dir_of(
            output.tsv, "tables/cost.tsv", "benchmarks"
        ),
        studies=lambda wildcards: all_study_specs(),
    script:
        "../workflow_scripts/cost_table.py"


rule report_html:
    input:
        unpack(
            lambda wildcards: {
                "template": REPORT_TEMPLATE,
                "baselines": f"{RESULTS}/tables/baselines.tsv",
                "training_data": training_data_table_file(wildcards),
                "metrics": metric_mean_files(),
                "per_query": metric_per_query_files(),
                "studies": list(study_table_files(wildcards).values()),
                "study_deltas": list(study_delta_files(wildcards).values()),
                "curves": list(curve_files(wildcards).values()),
                "decoder_plots": [
                    svg
                    for plots in decoder_plots(wildcards).values()
                    for svg in plots.values()
                ],
                "reproduction": f"{RESULTS}/tables/reproduction.tsv",
                "cost": f"{RESULTS}/tables/cost.tsv",
                "manifest": f"{RESULTS}/provenance/manifest.json",
                **compare_report_inputs(),
            }
        ),
    output:
        html=report(
            f"{RESULTS}/report/index.html",
            caption="../reports/captions/report_html.rst",
            category="Report",
            labels={"page": "irflow report"},
        ),
    log:
        log_path("report_html", "index"),
    benchmark:
        benchmark_path("report_html", "index")
    localrule: True
    container:
        container_image("torch")
    threads: 1
    params:
        results_dir=lambda wildcards, output: results_dir_of(
            output.html, "report/index.html"
        ),
        studies=lambda wildcards: study_table_files(wildcards),
        study_deltas=lambda wildcards: study_delta_files(wildcards),
        study_specs=lambda wildcards: all_study_specs(),
        curves=lambda wildcards: curve_files(wildcards),
        decoder_plots=decoder_plots,
        # The config as the user wrote it is read by the job from the config files (and the plan
        # rebuilt from them): editing a description reruns nothing, and no raw config value
        # reaches Snakemake's metadata or its --report.
        config_sources=[str(f) for f in workflow.configfiles],
        configfiles=[str(f) for f in workflow.overwrite_configfiles or []],
        config_overrides=redacted(dict(workflow.config_settings.config)),
        schema=os.path.join(workflow.basedir, "schemas", "config.schema.yaml"),
    script:
        "../workflow_scripts/report_html.py"
