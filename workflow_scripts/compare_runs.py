"""Rule compare_runs: this workflow's run files against a reference set (irflow.compare)."""

from irflow import job
from irflow.compare import RunPair, write_comparison

job.start(snakemake)
write_comparison(
    [RunPair(**pair) for pair in snakemake.params.pairs],
    list(snakemake.params.measures),
    [tuple(pair) for pair in snakemake.params.effect_pairs],
    snakemake.params.reference,
    snakemake.output.tsv,
    snakemake.output.topics,
    snakemake.output.effects,
    snakemake.output.markdown,
    tolerance=snakemake.params.tolerance,
)
