"""Rule prepare_corpus: stream a dataset's documents into corpus.parquet with a manifest."""

from irflow import logs
from irflow.data import DatasetSource, write_corpus

logs.to_file(snakemake.log[0])
source = dict(snakemake.params.source)
write_corpus(
    DatasetSource.from_config(source.pop("name"), source),
    snakemake.output.corpus,
    snakemake.output.manifest,
)
