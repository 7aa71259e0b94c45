"""Rule package_results: one archive with the config, locks, images, runs, tables and manifest."""

from irflow import job
from irflow.package import VERIFY_KEYS, build_package, packaged_config
from irflow.plan import read_config_files
from irflow.provenance import redact
from irflow.provenance.environment import code_state

job.start(snakemake)
if snakemake.params.package:
    config = packaged_config(snakemake.params.package)
else:
    config = read_config_files(snakemake.params.config_sources, snakemake.params.config_overrides)
for key in VERIFY_KEYS:
    config.pop(key, None)
build_package(
    snakemake.output.archive,
    snakemake.params.results_dir,
    [*snakemake.input.runs, *snakemake.input.metrics, *snakemake.input.tables],
    redact(config),
    list(snakemake.input.locks),
    dict(snakemake.params.containers),
    code_state(),
    manifest=snakemake.input.manifest,
)
