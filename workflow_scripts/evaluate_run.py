"""Rule evaluate_run: mean and per-query metrics of one run (ir-measures / trec_eval)."""

from irflow import job
from irflow.evaluate import DEFAULT_MEASURES, evaluate_run, write_metrics
from irflow.io import read_qrels, read_run_dict

job.start(snakemake)
mean, per_query = evaluate_run(
    read_run_dict(snakemake.input.run),
    read_qrels(snakemake.input.qrels),
    rel=snakemake.params.rel_level,
    measures=snakemake.params.measures or DEFAULT_MEASURES,
    unjudged=snakemake.params.unjudged,
    run_name=snakemake.input.run,
)
write_metrics(
    mean,
    per_query,
    {
        "dataset": snakemake.wildcards.dataset,
        "run": snakemake.wildcards.run,
        "rel_level": snakemake.params.rel_level,
    },
    snakemake.output.mean,
    snakemake.output.per_query,
)
