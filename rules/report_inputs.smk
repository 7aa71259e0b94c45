# Input functions and targets of rules/report.smk (kept apart: Snakemake's linter wants rules and
# functions in separate files).
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
    """(arm, reranker, dataset, run) of every study (rules/students.smk) and decoder study
    (rules/decoder.smk), or none."""
    rows = [row for study in PLAN.names("studies") for row in study_runs(study)]
    for study in PLAN.names("decoder_studies"):
        rows += decoder_study_runs(study)
    return rows


def decoder_plots(wildcards):
    """{arm: {plot: svg}}: heatmaps of the decoder studies' joint / MoE-LoRA arms (decoder.smk)."""
    return decoder_report_plots()


def known_runs():
    """(dataset, run) of every metric row the configuration builds."""
    pairs = list(baseline_runs())
    pairs += [(dataset, run) for _, _, dataset, run in configured_study_runs()]
    return list(dict.fromkeys(pairs))


def metric_mean_files():
    return [f"{RESULTS}/metrics/{d}/{run}/mean.tsv" for d, run in known_runs()]


def metric_per_query_files():
    return [f"{RESULTS}/metrics/{d}/{run}/per-query.tsv" for d, run in known_runs()]


def results_dir_of(output_path, below, child=""):
    """The results folder an output sits in (`below` is its path inside it), or a folder in it."""
    base = output_path[: -len(below) - 1]
    return os.path.join(base, child) if child else base


def expectation_metric_files(wildcards):
    """Metric files of the expectations whose run is configured; others are 'missing'."""
    known = set(known_runs())
    files = []
    for exp in PLAN.get("expectations", []):
        key = (exp["dataset"], exp["run"].strip("/"))
        if key in known:
            files.append(f"{RESULTS}/metrics/{key[0]}/{key[1]}/mean.tsv")
    return list(dict.fromkeys(files))


def study_table_files(wildcards):
    return {s: f"{RESULTS}/tables/studies/{s}.tsv" for s in all_study_specs()}


def study_delta_files(wildcards):
    return {s: f"{RESULTS}/tables/studies/{s}.per-query.tsv" for s in all_study_specs()}


def curve_files(wildcards):
    """Training curves of every student a study trains (arms only: variants are not trained)."""
    students = {
        student
        for spec in PLAN.section("studies").values()
        for arm in spec["arms"]
        for student in PLAN.replicates(arm)
    }
    return {s: f"{RESULTS}/students/{s}/curves.jsonl" for s in sorted(students)}


def training_data_table_file(wildcards):
    return [f"{RESULTS}/tables/training-data.tsv"] if PLAN.get("training_data") else []


def declared_containers(wildcards):
    """Rule -> the image its `container:` directive names (for the provenance manifest)."""
    return {r.name: r.container_img for r in workflow.rules if r.container_img}


REPORT_TEMPLATE = os.path.join(
    workflow.basedir, "reports", "templates", "report.html.j2"
)


def compare_report_inputs():
    """The rerun-vs-reference tables (rules/reproduce.smk) when the config names a reference."""
    if PLAN.reference() is None:
        return {}
    return {
        "compare": f"{RESULTS}/tables/compare.tsv",
        "compare_effects": f"{RESULTS}/tables/compare.effects.tsv",
    }
