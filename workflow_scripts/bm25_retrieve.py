"""Rule bm25_retrieve: BM25 top-k for a dataset's queries."""

from irflow import bm25, job
from irflow.data import read_queries
from irflow.io import write_trec_run

job.start(snakemake)
run = bm25.retrieve(
    snakemake.input.index,
    read_queries(snakemake.input.queries),
    k=snakemake.params.depth,
    threads=snakemake.threads,
)
write_trec_run(snakemake.output.run, run, tag=snakemake.wildcards.retriever)
