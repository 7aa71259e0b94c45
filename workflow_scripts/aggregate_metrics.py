"""Rule baselines_table: one table (TSV and Markdown) of every baseline run's metrics."""

from irflow import logs
from irflow.evaluate import aggregate_tables

logs.to_file(snakemake.log[0])
aggregate_tables(
    list(snakemake.input), snakemake.output.tsv, snakemake.output.markdown, title="Baselines"
)
