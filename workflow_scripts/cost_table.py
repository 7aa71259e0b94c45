"""Rule cost_table: benchmark files of the manifest's jobs summed per rule and per study arm."""

from irflow import job
from irflow.report.cost import jobs_in_manifest, write_cost_table

job.start(snakemake)
write_cost_table(
    snakemake.params.benchmarks,
    snakemake.output.tsv,
    snakemake.output.markdown,
    studies=dict(snakemake.params.studies),
    only=jobs_in_manifest(snakemake.input.manifest),
)
