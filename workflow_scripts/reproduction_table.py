"""Rule reproduction_table: every configured expectation against the measured metric row."""

from irflow import checks, job

job.start(snakemake)
expectations = [
    checks.Expectation.from_config(entry, where=f"expectations[{i}]")
    for i, entry in enumerate(snakemake.params.expectations)
]
measured = set(snakemake.input)
metric_files = {
    e.key: path
    for e in expectations
    if (path := checks.metric_file(snakemake.params.results_dir, e.dataset, e.run)) in measured
}
checks.write_reproduction_table(
    expectations, metric_files, snakemake.output.tsv, snakemake.output.markdown
)
