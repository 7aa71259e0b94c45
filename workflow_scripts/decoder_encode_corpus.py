"""Rule decoder_encode_corpus: a unified decoder's L2-normalised embeddings of every document."""

from irflow import job
from irflow.decoder.checkpoint import load_unified
from irflow.decoder.inference import encode_corpus
from irflow.models import ModelRef, configure_threads, pick_device

job.start(snakemake)
configure_threads(snakemake.threads)
base = dict(snakemake.params.base)
model = load_unified(
    snakemake.input.model, ModelRef.from_config(base.pop("name"), base), pick_device()
)
inference = dict(snakemake.params.inference)
encode_corpus(
    model,
    snakemake.input.corpus,
    snakemake.output.embeddings,
    batch_tokens=inference.get("batch_tokens"),
    max_batch=inference.get("max_batch", 64),
)
