#!/usr/bin/env bash
# The demo: every target of config.yaml on this machine (CPU or GPU), then the HTML report.
# Extra arguments go to snakemake (e.g. a single target, or --configfile configs/ci.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
# Models and datasets are local files; never reach for the hub.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
snakemake --profile profiles/local "$@"
snakemake --profile profiles/local "$@" --report results/report.html
echo "tables: results/tables/  report: results/report.html" >&2
