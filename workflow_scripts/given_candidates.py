"""Rule given_candidates: the dataset's own first-stage run as a TREC run file."""

from irflow import logs
from irflow.data import DatasetSource, write_candidates

logs.to_file(snakemake.log[0])
source = dict(snakemake.params.source)
write_candidates(
    DatasetSource.from_config(source.pop("name"), source),
    snakemake.output.run,
    depth=snakemake.params.depth,
)
