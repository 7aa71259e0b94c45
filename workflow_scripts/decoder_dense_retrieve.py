"""Rule decoder_dense_retrieve: exact cosine top-k over a unified decoder's corpus embeddings."""

from irflow import job
from irflow.data import read_queries
from irflow.decoder.checkpoint import load_unified
from irflow.decoder.inference import dense_retrieve
from irflow.io import write_trec_run
from irflow.models import ModelRef, configure_threads, pick_device

job.start(snakemake)
configure_threads(snakemake.threads)
base = dict(snakemake.params.base)
model = load_unified(
    snakemake.input.model, ModelRef.from_config(base.pop("name"), base), pick_device()
)
inference = dict(snakemake.params.inference)
run = dense_retrieve(
    model,
    snakemake.input.embeddings,
    read_queries(snakemake.input.queries),
    k=snakemake.params.depth,
    batch_tokens=inference.get("batch_tokens"),
    max_batch=inference.get("max_batch", 64),
)
write_trec_run(snakemake.output.run, run, tag=snakemake.wildcards.arm)
