"""Rule decoder_cosine_rerank: rescore a run's top candidates by a unified decoder's embedding
cosine (the decoder as a bi-encoder)."""

from irflow import job
from irflow.data import read_queries
from irflow.decoder.checkpoint import load_unified
from irflow.decoder.inference import cosine_rerank
from irflow.io import read_run_dict, write_trec_run
from irflow.models import ModelRef, configure_threads, pick_device

job.start(snakemake)
configure_threads(snakemake.threads)
base = dict(snakemake.params.base)
model = load_unified(
    snakemake.input.model, ModelRef.from_config(base.pop("name"), base), pick_device()
)
inference = dict(snakemake.params.inference)
run = cosine_rerank(
    model,
    snakemake.input.corpus,
    read_queries(snakemake.input.queries),
    read_run_dict(snakemake.input.run),
    depth=snakemake.params.depth,
    batch_tokens=inference.get("batch_tokens"),
    max_batch=inference.get("max_batch", 64),
)
write_trec_run(snakemake.output.run, run, tag=f"{snakemake.wildcards.arm}.cosine")
