# Evaluation: one metric table (mean and per query) per run file, and the aggregated tables.


rule evaluate_run:
    input:
        run=f"{RESULTS}/runs/{{dataset}}/{{run}}.trec",
        qrels=qrels_file,
    output:
        mean=f"{RESULTS}/metrics/{{dataset}}/{{run}}/mean.tsv",
        per_query=f"{RESULTS}/metrics/{{dataset}}/{{run}}/per-query.tsv",
    log:
        log_path("evaluate_run", "{dataset}/{run}"),
    benchmark:
        benchmark_path("evaluate_run", "{dataset}/{run}")
    wildcard_constraints:
        run="[A-Za-z0-9_./-]+",
    container:
        container_image("eval")
    threads: threads_for("evaluate_run")
    resources:
        **resources_for("evaluate_run"),
    params:
        rel_level=lambda wildcards: settings("datasets", wildcards.dataset)["rel_level"],
        measures=PLAN.section("evaluation").get("measures"),
        unjudged=settings("evaluation", "unjudged_queries"),
    script:
        "../workflow_scripts/evaluate_run.py"


rule baselines_table:
    input:
        baseline_metric_files(),
    output:
        tsv=report(
            f"{RESULTS}/tables/baselines.tsv",
            caption="../reports/captions/baselines.rst",
            category="Metrics",
            subcategory="Baselines",
            labels={"table": "baselines", "format": "TSV"},
        ),
        markdown=f"{RESULTS}/tables/baselines.md",
    log:
        log_path("baselines_table", "baselines"),
    benchmark:
        benchmark_path("baselines_table", "baselines")
    container:
        container_image("eval")
    threads: threads_for("baselines_table")
    resources:
        **resources_for("baselines_table"),
    script:
        "../workflow_scripts/aggregate_metrics.py"
