"""Rule provenance_manifest: every provenance record behind the workflow's targets."""

from irflow import job, provenance

job.start(snakemake)
provenance.write_manifest(
    list(snakemake.input),
    snakemake.params.provenance_dir,
    snakemake.output.manifest,
    snakemake.output.markdown,
    declared_containers=dict(snakemake.params.containers),
)
