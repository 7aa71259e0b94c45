"""Rule training_data_table: the statistics of every training-data artifact in one table."""

from irflow import job
from irflow.training_data.table import training_data_table

job.start(snakemake)
training_data_table(
    list(snakemake.input),
    snakemake.params.results_dir,
    snakemake.output.tsv,
    snakemake.output.markdown,
)
