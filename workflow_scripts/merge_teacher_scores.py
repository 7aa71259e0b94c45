"""Rule merge_teacher_scores: reassemble the scored shards in the samples' order."""

from irflow import logs
from irflow.training_data import merge_shards

logs.to_file(snakemake.log[0])
merge_shards(list(snakemake.input), snakemake.output.scores, snakemake.output.stats)
