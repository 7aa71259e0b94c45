# Report: reproduction checks, cost, the provenance manifest and the self-contained HTML report.
# Nothing here feeds a training or evaluation stage; every rule reads what the others built.
import os


def report_targets():
    """What `all` builds from this file (rules/common.smk adds it to all_targets())."""
    return [
        f"{RESULTS}/tables/reproduction.tsv",
        f"{RESULTS}/tables/reproduction.md",
        f"{RESULTS}/tables/cost.tsv",
        f"{RESULTS}/tables/cost.md",
        f"{RESULTS}/provenance/manifest.json",
        f"{RESULTS}/provenance/manifest.md",
        f"{RESULTS}/report/index.html",
    ]


def pipeline_targets():
    """Every target of `all` except this file's own (they summarise the others)."""
    mine = set(report_targets())
    return [t for t in all_targets() if t not in mine]


def configured_study_runs():
    """(arm, reranker, dataset, run) of every study (rules/students.smk), or none."""
    if "study_runs" not in globals():
        return []
    return [row for study in config.get("studies", {}) for row in study_runs(study)]


def known_runs():
    """(dataset, run) of every metric row the configuration builds."""
    pairs = list(baseline_runs())
    pairs += [(dataset, run) for _, _, dataset, run in configured_study_runs()]
    return list(dict.fromkeys(pairs))


def metric_mean_files():
    return [f"{RESULTS}/metrics/{d}/{run}/mean.tsv" for d, run in known_runs()]


def expectation_metric_files(wildcards):
    """Metric files of the expectations whose run is configured; others are 'missing'."""
    known = set(known_runs())
    files = []
    for exp in config.get("expectations", []):
        key = (exp["dataset"], exp["run"].strip("/"))
        if key in known:
            files.append(f"{RESULTS}/metrics/{key[0]}/{key[1]}/mean.tsv")
    return list(dict.fromkeys(files))


def study_table_files(wildcards):
    return {s: f"{RESULTS}/tables/studies/{s}.tsv" for s in config.get("studies", {})}


def study_delta_files(wildcards):
    return {
        s: f"{RESULTS}/tables/studies/{s}.per-query.tsv" for s in config.get("studies", {})
    }


def curve_files(wildcards):
    """Training curves of every student a study trains (arms only: variants are not trained)."""
    students = {arm for spec in config.get("studies", {}).values() for arm in spec["arms"]}
    return {s: f"{RESULTS}/students/{s}/curves.jsonl" for s in sorted(students)}


def training_data_table_file(wildcards):
    return (
        [f"{RESULTS}/tables/training-data.tsv"] if config.get("training_data") else []
    )


def declared_containers(wildcards):
    """Rule -> the image its `container:` directive names (for the provenance manifest)."""
    return {r.name: r.container_img for r in workflow.rules if r.container_img}


REPORT_TEMPLATE = os.path.join(workflow.basedir, "reports", "templates", "report.html.j2")


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
        expectations=lambda wildcards: config.get("expectations", []),
        results_dir=RESULTS,
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
        provenance_dir=f"{RESULTS}/provenance",
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
        benchmarks=f"{RESULTS}/benchmarks",
        studies=lambda wildcards: config.get("studies", {}),
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
                "per_query": [
                    f.replace("/mean.tsv", "/per-query.tsv") for f in metric_mean_files()
                ],
                "studies": list(study_table_files(wildcards).values()),
                "study_deltas": list(study_delta_files(wildcards).values()),
                "curves": list(curve_files(wildcards).values()),
                "reproduction": f"{RESULTS}/tables/reproduction.tsv",
                "cost": f"{RESULTS}/tables/cost.tsv",
                "manifest": f"{RESULTS}/provenance/manifest.json",
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
        results_dir=RESULTS,
        studies=lambda wildcards: study_table_files(wildcards),
        study_deltas=lambda wildcards: study_delta_files(wildcards),
        study_specs=lambda wildcards: config.get("studies", {}),
        curves=lambda wildcards: curve_files(wildcards),
        configfiles=[str(f) for f in workflow.overwrite_configfiles or []],
        config=lambda wildcards: config,
    script:
        "../workflow_scripts/report_html.py"
