"""Rule train_unified: staged training of one unified decoder arm (embedding + reranking).

With ``gpus: N > 1`` in the rule's resources the training runs in N torchrun processes
(irflow.launch), one model, each global batch split across them (irflow.decoder.distributed)."""

from irflow import job, launch
from irflow.decoder.spec import parse_spec
from irflow.io import write_json_atomic
from irflow.models import configure_threads

job.start(snakemake)
configure_threads(snakemake.threads)
arm = snakemake.wildcards.arm
spec = dict(snakemake.params.spec)
spec["training"] = {
    **spec["training"],
    "checkpoint_every_steps": snakemake.resources.checkpoint_every_steps or None,
}
parse_spec(spec, where=f"config decoders.{arm}")  # errors name the arm's key path
call = {
    "spec_dict": spec,
    "samples_parquet": snakemake.input.data,
    "queries_parquet": snakemake.input.queries,
    "corpus_parquet": snakemake.input.corpus,
    "base": dict(snakemake.params.base),
    "out_dir": snakemake.output.model,
    "diagnostics_dir": snakemake.output.diagnostics,
    "checkpoint_dir": snakemake.params.checkpoints,
}
processes = int(snakemake.resources.get("gpu", 0) or 0)
stats = launch.call(
    processes, "irflow.decoder.train:train_unified_from_config", call, snakemake.threads
)
write_json_atomic(snakemake.output.stats, {"decoder": arm, **stats})
