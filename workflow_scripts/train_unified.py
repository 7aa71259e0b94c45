"""Rule train_unified: staged training of one unified decoder arm (embedding + reranking)."""

from irflow import job
from irflow.decoder.spec import parse_spec
from irflow.decoder.train import train_unified
from irflow.io import write_json_atomic
from irflow.models import ModelRef, configure_threads

job.start(snakemake)
configure_threads(snakemake.threads)
arm = snakemake.wildcards.arm
spec = dict(snakemake.params.spec)
spec["training"] = {
    **spec["training"],
    "checkpoint_every_steps": snakemake.resources.checkpoint_every_steps or None,
}
parse_spec(spec, where=f"config decoders.{arm}")  # errors name the arm's key path
base = dict(snakemake.params.base)
stats = train_unified(
    spec,
    snakemake.input.data,
    snakemake.input.queries,
    snakemake.input.corpus,
    ModelRef.from_config(base.pop("name"), base),
    snakemake.output.model,
    snakemake.output.diagnostics,
    checkpoint_dir=snakemake.params.checkpoints,
)
write_json_atomic(snakemake.output.stats, {"decoder": arm, **stats})
