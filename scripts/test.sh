#!/usr/bin/env bash
# The test suite (what CI runs): lint, then pytest. Extra arguments go to pytest.
# On first use (no venv or no unpacked models yet) it runs scripts/setup.sh; when everything is
# in place that step is skipped, so `bash scripts/setup.sh && bash scripts/test.sh` (CI) sets
# up once.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/snakemake ] ||
  [ ! -f resources/models/all-MiniLM-L6-v2/model.safetensors ] ||
  [ ! -f resources/models/all-mpnet-base-v2/model.safetensors ]; then
  echo "== first use: setting up (bash scripts/setup.sh)" >&2
  bash scripts/setup.sh
fi
. .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
ruff check .
ruff format --check src tests workflow_scripts scripts benchmarks
snakefmt --check Snakefile rules
snakemake --lint --cores 1 >/dev/null
python -m pytest "$@"
