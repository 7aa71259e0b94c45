#!/usr/bin/env bash
# The test suite (what CI runs): lint, then pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
ruff check .
ruff format --check src tests workflow_scripts scripts benchmarks
snakefmt --check Snakefile rules
snakemake --lint --cores 1 >/dev/null
python -m pytest "$@"
