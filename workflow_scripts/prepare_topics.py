"""Rule prepare_topics: write a dataset's judged queries and its qrels, with a manifest."""

from irflow import logs
from irflow.data import DatasetSource, write_topics

logs.to_file(snakemake.log[0])
source = dict(snakemake.params.source)
write_topics(
    DatasetSource.from_config(source.pop("name"), source),
    snakemake.output.queries,
    snakemake.output.qrels,
    snakemake.output.manifest,
)
