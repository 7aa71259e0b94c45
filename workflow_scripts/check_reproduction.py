"""Rule check: fail, listing each expectation that was missed or not measured."""

import logging
import sys

from irflow import checks, job

job.start(snakemake)
table = checks.read_reproduction_table(snakemake.input[0])
problems = checks.failures(table)
for line in problems:
    logging.error("%s", line)
    print(line)  # stdout reaches the console; the log keeps a copy
if problems:
    sys.exit(f"reproduction check failed: {len(problems)} of {len(table)} expectations")
logging.info("reproduction check passed: %d expectations reproduced", len(table))
print(f"reproduction check passed: {len(table)} expectations reproduced")
