"""Rule merge_runs: concatenate query-shard run files, in shard order, into one run file."""

from irflow import bm25, job

job.start(snakemake)
bm25.merge_runs(list(snakemake.input.shards), snakemake.output.run)
