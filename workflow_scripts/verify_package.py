"""Rule verify_package: a reproduction package against what this checkout computed."""

from irflow import job
from irflow.package import write_verification

job.start(snakemake)
write_verification(
    snakemake.input.package,
    snakemake.params.results_dir,
    snakemake.output.tsv,
    snakemake.output.markdown,
    mode=snakemake.params.mode,
    tolerance=snakemake.params.tolerance,
    datasets={name: dict(spec) for name, spec in snakemake.params.datasets.items()},
    measures=dict(snakemake.params.measures) if snakemake.params.measures else None,
)
