"""Rule verify: fail, naming each package row that was not reproduced (irflow.package)."""

import logging
import sys

import pandas as pd

from irflow import job
from irflow.package import problems

job.start(snakemake)
table = pd.read_csv(snakemake.input[0], sep="\t", keep_default_na=False, na_values=[""])
table["note"] = table["note"].fillna("")
table["measure"] = table["measure"].fillna("")
lines = problems(table)
for line in lines:
    logging.error("%s", line)
    print(line)
if lines:
    sys.exit(f"package verification failed: {len(lines)} of {len(table)} rows not reproduced")
counts = table["status"].value_counts().to_dict()
summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
logging.info("package verified: %s", summary)
print(f"package verified: {summary}")
