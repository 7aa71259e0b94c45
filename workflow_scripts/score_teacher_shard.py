"""Rule score_teacher_shard: teacher scores of one shard of the mined samples."""

from irflow import job
from irflow.models import ModelRef, configure_threads
from irflow.training_data import TeacherSpec
from irflow.training_data.teacher import score_shard

job.start(snakemake)
configure_threads(snakemake.threads)
model = dict(snakemake.params.model)
spec = TeacherSpec.from_config(
    snakemake.wildcards.teacher,
    {k: v for k, v in snakemake.params.teacher.items() if k not in ("shards", "chunk_samples")},
    ModelRef.from_config(model.pop("name"), model),
)
score_shard(
    snakemake.input.negatives,
    int(snakemake.wildcards.shard),
    int(snakemake.wildcards.shards),
    spec,
    snakemake.input.corpus,
    snakemake.input.queries,
    snakemake.output.shard,
    chunk_samples=snakemake.params.teacher["chunk_samples"],
)
