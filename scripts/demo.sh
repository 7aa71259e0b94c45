#!/usr/bin/env bash
# The demo. With no arguments: the zero-shot baselines (data, BM25, dense retrieval, reranking,
# metric tables; about 10 minutes on 2 CPU cores) and Snakemake's report of them.
# `bash scripts/demo.sh all`: every target of config.yaml: the training data, the three studies,
# the decoder arms and the HTML reproducibility report (hours on 2 CPU cores: it trains real models).
# Other arguments go to snakemake (a target, a rule name, --configfile configs/ci.yaml, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
# Models and datasets are local files; never reach for the hub.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [ "$#" -eq 0 ]; then
  set -- baselines
fi
snakemake --profile profiles/local "$@"
snakemake --profile profiles/local "$@" --report results/report.html
echo "tables: results/tables/  report: results/report.html  (results/report/index.html after 'all')" >&2
