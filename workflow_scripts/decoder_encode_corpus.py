"""Rule decoder_encode_corpus: a unified decoder's L2-normalised embeddings of every document."""

from irflow import job
from irflow.decoder.checkpoint import batching_options, load_arm
from irflow.decoder.inference import encode_corpus
from irflow.models import configure_threads

job.start(snakemake)
configure_threads(snakemake.threads)
model = load_arm(snakemake.input.model, snakemake.params.base)
encode_corpus(
    model,
    snakemake.input.corpus,
    snakemake.output.embeddings,
    **batching_options(snakemake.params.inference),
)
