"""The project's own report: cost accounting, the self-contained HTML page, LaTeX study tables.

:mod:`irflow.report.cost` sums Snakemake's per-job benchmark files; :mod:`irflow.report.html`
renders every table, plot and provenance fact into one HTML file that opens offline;
:mod:`irflow.report.compact` is the paper-style view of a study table that the page and
:mod:`irflow.report.latex` (``results/tables/studies/<study>.tex``) both print.
"""
