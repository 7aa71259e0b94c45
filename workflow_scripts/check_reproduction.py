"""Rule check: fail, listing each expectation that was missed or not measured, and each
artifact behind a measured row (its metric file and, transitively, what made it) that is stale,
missing or unrecorded, with the command that rebuilds it."""

import logging
import sys
from pathlib import Path

from irflow import checks, job, provenance

job.start(snakemake)
table_path = snakemake.input[0]
results_dir = Path(table_path).parents[1]  # <results>/tables/reproduction.tsv
table = checks.read_reproduction_table(table_path)
problems = checks.failures(table)
measured = [
    checks.metric_file(results_dir, row["dataset"], row["run"])
    for _, row in table.iterrows()
    if row["status"] != "missing"
]
untrusted = [str(p) for p in provenance.stale_inputs(results_dir, [table_path, *measured])]
for line in problems + untrusted:
    logging.error("%s", line)
    print(line)  # stdout reaches the console; the log keeps a copy
if problems or untrusted:
    sys.exit(
        f"reproduction check failed: {len(problems)} of {len(table)} expectations failed, "
        f"{len(untrusted)} artifacts behind them stale, missing or unrecorded"
    )
logging.info("reproduction check passed: %d expectations reproduced", len(table))
print(f"reproduction check passed: {len(table)} expectations reproduced")
