"""Rule bm25_retrieve_shard: BM25 top-k for one contiguous shard of a dataset's sorted queries."""

from irflow import bm25, job
from irflow.data import read_queries
from irflow.io import write_trec_run

job.start(snakemake)
run = bm25.retrieve_shard(
    snakemake.input.index,
    read_queries(snakemake.input.queries),
    k=snakemake.params.depth,
    shard_index=int(snakemake.wildcards.shard),
    num_shards=int(snakemake.wildcards.shards),
    threads=snakemake.threads,
)
write_trec_run(snakemake.output.run, run, tag=snakemake.wildcards.retriever)
