#!/usr/bin/env bash
# The demo; on first use it runs scripts/setup.sh (no venv or no unpacked models yet).
#
#   bash scripts/demo.sh          configs/demo.yaml: one complete distillation chain at smoke
#                                 scale (SciFact training queries -> BM25 negatives -> teacher
#                                 scores -> consistency filter -> GUIDE and first-layers inits ->
#                                 trained students -> runs -> metrics -> study table ->
#                                 reproduction checks -> HTML report; about 10 min on 2 idle CPU
#                                 cores), then `check`, and prints where the report is
#   bash scripts/demo.sh all      every target of config.yaml: the training data, the three
#                                 studies, the decoder arms and the HTML report (hours on 2 CPU
#                                 cores), plus Snakemake's own report (results/report.html)
#   bash scripts/demo.sh ARGS...  snakemake ARGS with config.yaml (a target, a rule name,
#                                 --configfile configs/ci.yaml, ...), plus Snakemake's report
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/snakemake ] ||
  [ ! -f resources/models/all-MiniLM-L6-v2/model.safetensors ] ||
  [ ! -f resources/models/all-mpnet-base-v2/model.safetensors ]; then
  echo "== first use: setting up (bash scripts/setup.sh)" >&2
  bash scripts/setup.sh
fi
. .venv/bin/activate
# Models and datasets are local files; never reach for the hub.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1

if [ "$#" -gt 0 ]; then
  snakemake --profile profiles/local "$@"
  snakemake --profile profiles/local "$@" --report results/report.html
  echo "tables: results/tables/  report: results/report.html  (results/report/index.html after 'all')" >&2
  exit 0
fi

config=configs/demo.yaml
results=$(python -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1])).get("results_dir", "results"))' "$config")
SECONDS=0
snakemake --profile profiles/local all --configfile "$config"
snakemake --profile profiles/local check --configfile "$config"
echo "demo done in $((SECONDS / 60)) min $((SECONDS % 60)) s; reproduction checks passed" >&2
echo "report: $results/report/index.html   (tables: $results/tables/, job logs: $results/logs/)" >&2
