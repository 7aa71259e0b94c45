"""Rule merge_teacher_scores: reassemble the scored shards in the samples' order."""

from irflow import job
from irflow.training_data import merge_shards

job.start(snakemake)
merge_shards(list(snakemake.input), snakemake.output.scores, snakemake.output.stats)
