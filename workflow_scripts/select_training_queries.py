"""Rule select_training_queries: a training set's queries with positives, leakage-checked."""

from irflow import job
from irflow.training_data.selection import select_training_queries

job.start(snakemake)
spec = snakemake.params.training_set
select_training_queries(
    snakemake.input.queries,
    snakemake.input.qrels,
    snakemake.params.held_out,
    snakemake.output.queries,
    snakemake.output.qrels,
    snakemake.output.stats,
    min_label=spec["min_label"],
    max_queries=spec.get("max_queries"),
    seed=snakemake.params.seed,
    on_leak=spec["on_leak"],
)
