"""Rule consistency_filter: drop negatives (or samples) the teacher scores above the positive."""

from irflow import job
from irflow.training_data import filter_consistency

job.start(snakemake)
filter_consistency(
    snakemake.input.scores,
    snakemake.output.filtered,
    snakemake.output.stats,
    params={k: v for k, v in snakemake.params.filter.items() if k != "description"},
    name=snakemake.wildcards.filter,
)
