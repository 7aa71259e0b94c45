"""Rule mine_negatives: hard negatives from a first-stage run, NV-Retriever positive-aware."""

from irflow import job
from irflow.training_data import write_negatives

job.start(snakemake)
params = {k: v for k, v in snakemake.params.miner.items() if k not in ("retriever", "description")}
write_negatives(
    snakemake.input.queries,
    snakemake.input.qrels,
    snakemake.input.run,
    snakemake.output.negatives,
    snakemake.output.stats,
    params={
        **params,
        "min_label": snakemake.params.training_set["min_label"],
        "positives_without_text": snakemake.params.training_set["positives_without_text"],
        "seed": snakemake.params.seed,
    },
    corpus_parquet=snakemake.input.corpus,
)
