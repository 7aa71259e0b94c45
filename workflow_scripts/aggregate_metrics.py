"""Rule baselines_table: one table (TSV and Markdown) of every baseline run's metrics."""

from irflow import job
from irflow.evaluate import aggregate_tables

job.start(snakemake)
aggregate_tables(
    list(snakemake.input), snakemake.output.tsv, snakemake.output.markdown, title="Baselines"
)
