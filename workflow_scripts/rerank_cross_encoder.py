"""Rule rerank_cross_encoder: rescore the top candidates of a run with a cross-encoder."""

from irflow import job
from irflow.cross_encoder import load_cross_encoder, rerank_candidates
from irflow.data import read_queries
from irflow.io import read_run_dict, write_trec_run
from irflow.models import ModelRef, configure_threads, pick_device

job.start(snakemake)
configure_threads(snakemake.threads)
spec = dict(snakemake.params.model)
model = load_cross_encoder(ModelRef.from_config(spec.pop("name"), spec), pick_device())
run = rerank_candidates(
    model,
    snakemake.input.corpus,
    read_queries(snakemake.input.queries),
    read_run_dict(snakemake.input.run),
    depth=snakemake.params.depth,
    batch_size=spec.get("batch_size", 32),
)
write_trec_run(snakemake.output.run, run, tag=snakemake.wildcards.reranker)
