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
    # Hundreds of second-long jobs at paper scale: on a cluster they travel in groups
    # (profiles/slurm sets group-components: evaluate=50), one submission per group.
    group:
        "evaluate"
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
    localrule: True
    container:
        container_image("eval")
    threads: threads_for("baselines_table")
    resources:
        **resources_for("baselines_table"),
    script:
        "../workflow_scripts/aggregate_metrics.py"


# One table rule for every study, students' and decoders' alike (irflow.studies): arms side by
# side with paired tests and per-query deltas.
rule study_table:
    input:
        lambda wildcards: [
            f"{RESULTS}/metrics/{dataset}/{run}/per-query.tsv"
            for _, _, dataset, run in any_study_runs(wildcards.study)
        ],
    output:
        tsv=report(
            f"{RESULTS}/tables/studies/{{study}}.tsv",
            caption="../reports/captions/study.rst",
            category="Studies",
            subcategory="{study}",
            labels={"study": "{study}", "format": "TSV"},
        ),
        markdown=f"{RESULTS}/tables/studies/{{study}}.md",
        per_query=f"{RESULTS}/tables/studies/{{study}}.per-query.tsv",
        latex=f"{RESULTS}/tables/studies/{{study}}.tex",
        seeds=f"{RESULTS}/tables/studies/{{study}}.seeds.tsv",
    log:
        log_path("study_table", "{study}"),
    benchmark:
        benchmark_path("study_table", "{study}")
    wildcard_constraints:
        study="|".join(re.escape(s) for s in all_study_specs()) or _nothing(),
    localrule: True
    container:
        container_image("eval")
    threads: threads_for("study_table")
    resources:
        **resources_for("study_table"),
    params:
        rows=lambda wildcards: PLAN.study_table_rows(wildcards.study),
        spec=lambda wildcards: all_study_specs()[wildcards.study],
        seed=PLAN.seed,
        scale=PLAN.scale,
    script:
        "../workflow_scripts/study_table.py"
