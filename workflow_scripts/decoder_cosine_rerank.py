"""Rule decoder_cosine_rerank: rescore a run's top candidates by a unified decoder's embedding
cosine (the decoder as a bi-encoder)."""

from irflow import job
from irflow.data import read_queries
from irflow.decoder.checkpoint import batching_options, load_arm
from irflow.decoder.inference import cosine_rerank
from irflow.io import read_run_dict, write_trec_run
from irflow.models import configure_threads

job.start(snakemake)
configure_threads(snakemake.threads)
model = load_arm(snakemake.input.model, snakemake.params.base)
run = cosine_rerank(
    model,
    snakemake.input.corpus,
    read_queries(snakemake.input.queries),
    read_run_dict(snakemake.input.run),
    depth=snakemake.params.depth,
    **batching_options(snakemake.params.inference),
)
write_trec_run(snakemake.output.run, run, tag=f"{snakemake.wildcards.arm}.cosine")
