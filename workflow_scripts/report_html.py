"""Rule report_html: the self-contained HTML report (tables, plots, provenance, commands)."""

from irflow import job
from irflow.plan import Plan, read_config_files
from irflow.report.html import ReportInputs, write_report

job.start(snakemake)


def first(paths):
    """A named input given as a list of zero or one path (optional tables)."""
    if isinstance(paths, str):
        return paths
    return next(iter(paths), None)


config = read_config_files(snakemake.params.config_sources, snakemake.params.config_overrides)
inputs = ReportInputs(
    results_dir=snakemake.params.results_dir,
    baselines=snakemake.input.baselines,
    training_data=first(getattr(snakemake.input, "training_data", [])),
    studies=dict(snakemake.params.studies),
    study_deltas=dict(snakemake.params.study_deltas),
    study_specs=dict(snakemake.params.study_specs),
    metric_files=list(snakemake.input.metrics),
    curves=dict(snakemake.params.curves),
    decoder_plots={arm: dict(plots) for arm, plots in snakemake.params.decoder_plots.items()},
    reproduction=snakemake.input.reproduction,
    compare=getattr(snakemake.input, "compare", None),
    compare_effects=getattr(snakemake.input, "compare_effects", None),
    cost=snakemake.input.cost,
    manifest=snakemake.input.manifest,
    config=config,
    plan=Plan.from_config(config, snakemake.params.schema).describe(),
    configfiles=list(snakemake.params.configfiles),
)
# The config's scale (smoke | small | paper): at smoke the page says its numbers are no findings.
write_report(
    inputs,
    snakemake.output.html,
    template=snakemake.input.template,
    scale=inputs.config.get("scale"),
)
