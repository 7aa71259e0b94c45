"""Rule given_candidates: the dataset's own first-stage run as a TREC run file."""

from irflow import job
from irflow.data import DatasetSource, write_candidates

job.start(snakemake)
source = dict(snakemake.params.source)
write_candidates(
    DatasetSource.from_config(source.pop("name"), source),
    snakemake.output.run,
    depth=snakemake.params.depth,
)
