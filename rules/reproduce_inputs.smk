# Input functions of rules/reproduce.smk (kept apart: Snakemake's linter wants rules and
# functions in separate files).
import os

LOCK_FILES = [
    os.path.join(workflow.basedir, "envs", name)
    for name in ("requirements.lock", "requirements-cuda.lock", "eval.lock")
]


def reference_setting():
    reference = PLAN.reference()
    if reference is None:
        raise WorkflowError(
            "config: 'compare' needs 'reference:', a folder of run files laid out as "
            "results/runs/ (<dataset>/<run>.trec), e.g. --config reference=/path/to/results"
        )
    return reference


def reference_folder():
    from irflow.compare import reference_runs_folder

    return str(reference_runs_folder(reference_setting()["runs"]))


def compare_pairs(wildcards):
    """Every run this config builds, with its reference file and qrels (irflow.compare)."""
    folder = reference_folder()
    return [
        {
            "dataset": dataset,
            "run": run,
            "ours": f"{RESULTS}/runs/{dataset}/{run}.trec",
            "reference": os.path.join(folder, dataset, f"{run}.trec"),
            "qrels": f"{RESULTS}/data/datasets/{dataset}/qrels.trec",
            "rel_level": settings("datasets", dataset)["rel_level"],
        }
        for dataset, run in known_runs()
    ]


def compare_inputs(wildcards):
    pairs = compare_pairs(wildcards)
    return {
        "runs": [p["ours"] for p in pairs],
        "qrels": sorted({p["qrels"] for p in pairs}),
        # Reference files that exist are inputs (editing one reruns the comparison); a missing
        # one is a 'missing' row, not an error.
        "reference": [p["reference"] for p in pairs if os.path.isfile(p["reference"])],
    }


def package_inputs(wildcards):
    """What a reproduction package holds (irflow.package): run files, metric tables, every
    table, and the provenance manifest."""
    runs = [f"{RESULTS}/runs/{d}/{run}.trec" for d, run in known_runs()]
    tables = [
        t
        for t in pipeline_targets()
        if t.startswith(f"{RESULTS}/tables/") and not t.endswith(".html")
    ]
    return {
        "runs": runs,
        "metrics": metric_mean_files() + metric_per_query_files(),
        "tables": tables
        + [f"{RESULTS}/tables/reproduction.tsv", f"{RESULTS}/tables/reproduction.md"],
        "manifest": f"{RESULTS}/provenance/manifest.json",
        "locks": LOCK_FILES,
    }


def packaged_datasets():
    """dataset -> {qrels, rel_level} of every dataset with a run (verify reads these)."""
    datasets = sorted({d for d, _ in known_runs()})
    return {
        d: {
            "qrels": f"{RESULTS}/data/datasets/{d}/qrels.trec",
            "rel_level": settings("datasets", d)["rel_level"],
        }
        for d in datasets
    }


def verify_inputs(wildcards):
    """The package, and what it is compared with: this checkout's rerun of every run and metric
    table (verify_from: rerun), or only the qrels (verify_from: runs)."""
    archive = PLAN.get("package")
    if not archive:
        raise WorkflowError(
            "config: 'verify' needs 'package:', the archive to verify: "
            "snakemake verify --config package=<irflow-reproduction.tar.gz>"
        )
    inputs = {
        "package": archive,
        "qrels": [d["qrels"] for d in packaged_datasets().values()],
    }
    if PLAN.get("verify_from", "rerun") == "rerun":
        inputs["runs"] = [f"{RESULTS}/runs/{d}/{run}.trec" for d, run in known_runs()]
        inputs["metrics"] = metric_mean_files()
    return inputs
