"""The project's own report: cost accounting and the self-contained HTML pages.

:mod:`irflow.report.cost` sums Snakemake's per-job benchmark files; :mod:`irflow.report.html`
renders every table, plot and provenance fact into one HTML file that opens offline.
"""
