"""Rule rerank_bi_encoder: rescore the top candidates of a run by bi-encoder cosine."""

from irflow import job
from irflow.data import read_queries
from irflow.dense import rerank_candidates
from irflow.io import read_run_dict, write_trec_run
from irflow.models import ModelRef, configure_threads, load_sentence_transformer, pick_device

job.start(snakemake)
configure_threads(snakemake.threads)
spec = dict(snakemake.params.model)
model = load_sentence_transformer(ModelRef.from_config(spec.pop("name"), spec), pick_device())
run = rerank_candidates(
    model,
    snakemake.input.corpus,
    read_queries(snakemake.input.queries),
    read_run_dict(snakemake.input.run),
    depth=snakemake.params.depth,
    batch_size=spec.get("batch_size", 64),
    query_prompt=spec.get("query_prompt"),
    dim=snakemake.params.dim,
)
write_trec_run(snakemake.output.run, run, tag=snakemake.wildcards.reranker)
