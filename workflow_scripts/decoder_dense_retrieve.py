"""Rule decoder_dense_retrieve: exact cosine top-k over a unified decoder's corpus embeddings."""

from irflow import job
from irflow.data import read_queries
from irflow.decoder.checkpoint import batching_options, load_arm
from irflow.decoder.inference import dense_retrieve
from irflow.io import write_trec_run
from irflow.models import configure_threads

job.start(snakemake)
configure_threads(snakemake.threads)
model = load_arm(snakemake.input.model, snakemake.params.base)
run = dense_retrieve(
    model,
    snakemake.input.embeddings,
    read_queries(snakemake.input.queries),
    k=snakemake.params.depth,
    **batching_options(snakemake.params.inference),
)
write_trec_run(snakemake.output.run, run, tag=snakemake.wildcards.arm)
