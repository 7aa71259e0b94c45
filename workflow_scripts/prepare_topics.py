"""Rule prepare_topics: write a dataset's judged queries and its qrels, with a manifest."""

from irflow import job
from irflow.data import DatasetSource, write_topics

job.start(snakemake)
source = dict(snakemake.params.source)
write_topics(
    DatasetSource.from_config(source.pop("name"), source),
    snakemake.output.queries,
    snakemake.output.qrels,
    snakemake.output.manifest,
)
