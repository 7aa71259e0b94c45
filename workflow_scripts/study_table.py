"""Rule study_table: one study's arms side by side with paired tests and per-query deltas."""

from irflow import job
from irflow.report.latex import write_study_latex
from irflow.studies import write_study_table

job.start(snakemake)
write_study_table(
    snakemake.wildcards.study,
    dict(snakemake.params.spec),
    [tuple(row) for row in snakemake.params.rows],
    list(snakemake.input),
    snakemake.output.tsv,
    snakemake.output.markdown,
    snakemake.output.per_query,
    seed=snakemake.params.seed,
    scale=snakemake.params.scale,
    seeds_out=snakemake.output.seeds,
)
write_study_latex(
    snakemake.wildcards.study,
    dict(snakemake.params.spec),
    snakemake.output.tsv,
    snakemake.output.latex,
    scale=snakemake.params.scale,
)
