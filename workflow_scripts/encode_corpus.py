"""Rule encode_corpus: L2-normalised bi-encoder embeddings of every document."""

from irflow import job
from irflow.dense import encode_corpus
from irflow.models import ModelRef, configure_threads, load_sentence_transformer, pick_device

job.start(snakemake)
configure_threads(snakemake.threads)
spec = dict(snakemake.params.model)
model = load_sentence_transformer(ModelRef.from_config(spec.pop("name"), spec), pick_device())
encode_corpus(
    model,
    snakemake.input.corpus,
    snakemake.output.embeddings,
    batch_size=spec.get("batch_size", 64),
)
