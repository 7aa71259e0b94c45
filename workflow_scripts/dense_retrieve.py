"""Rule dense_retrieve: exact inner-product top-k over the corpus embeddings."""

from irflow import job
from irflow.data import read_queries
from irflow.dense import dense_retrieve
from irflow.io import write_trec_run
from irflow.models import ModelRef, configure_threads, load_sentence_transformer, pick_device

job.start(snakemake)
configure_threads(snakemake.threads)
spec = dict(snakemake.params.model)
model = load_sentence_transformer(ModelRef.from_config(spec.pop("name"), spec), pick_device())
run = dense_retrieve(
    model,
    snakemake.input.embeddings,
    read_queries(snakemake.input.queries),
    k=snakemake.params.depth,
    batch_size=spec.get("batch_size", 64),
    query_prompt=spec.get("query_prompt"),
    dim=snakemake.params.dim,
)
write_trec_run(snakemake.output.run, run, tag=snakemake.wildcards.retriever)
