#!/usr/bin/env bash
# The one-GPU check (benchmarks/gpu_check.py) from the repository root, with the project's
# virtual environment when there is one and the hub offline. Arguments go to the script
# (--cpu, --quick, --out DIR, --only CHECK...). Exits non-zero when a check failed.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .venv/bin/activate ]; then
    # shellcheck disable=SC1091
    . .venv/bin/activate
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec python benchmarks/gpu_check.py "$@"
