"""Rule prepare_corpus: stream a dataset's documents into corpus.parquet with a manifest."""

from irflow import job
from irflow.data import DatasetSource, write_corpus

job.start(snakemake)
source = dict(snakemake.params.source)
write_corpus(
    DatasetSource.from_config(source.pop("name"), source),
    snakemake.output.corpus,
    snakemake.output.manifest,
)
