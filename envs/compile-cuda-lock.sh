#!/usr/bin/env bash
# Write envs/requirements-cuda.lock: envs/requirements.in resolved for Linux x86_64 against PyPI,
# where the default torch wheel is the CUDA build, with envs/requirements.lock (the CPU freeze)
# as the constraint, so every package both locks share has the CPU lock's version and only the
# CUDA packages (cuda-*, nvidia-*, triton, and setuptools, which the CUDA torch declares) are new.
# Every file of every pinned version gets its sha256 from PyPI's index.
#
#   bash envs/compile-cuda-lock.sh           # resolve from the registry's metadata (seconds,
#                                            # no wheels downloaded) and write the lock
#   bash envs/compile-cuda-lock.sh --check   # instead: pip resolves the committed lock for the
#                                            # target platform and checks every hash; this downloads
#                                            # the wheels (about 3.3 GB; nothing is kept or installed)
#
# Needs uv to write (`pip install uv`; $UV names another binary), pip to check, and the PyPI
# registry. Any machine will do: the target (CPython 3.11, manylinux_2_28 x86_64) is explicit.
set -euo pipefail
cd "$(dirname "$0")/.."

UV=${UV:-uv}
INDEX=${IRFLOW_LOCK_INDEX_URL:-https://pypi.org/simple}
LOCK=envs/requirements-cuda.lock
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
export SSL_CERT_FILE=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}

compile_lock() {
  command -v "$UV" >/dev/null 2>&1 || { echo "uv not found: pip install uv (or set UV=...)" >&2; exit 2; }
  local tmp
  tmp=$(mktemp)
  {
    cat <<EOF
# Full pinned environment with the CUDA build of PyTorch (GPU nodes; containers/torch-cuda.Dockerfile).
# Written by envs/compile-cuda-lock.sh: envs/requirements.in for Python 3.11 on manylinux_2_28
# x86_64 from PyPI, constrained to envs/requirements.lock (the CPU freeze): the same versions of
# every shared package, plus what PyPI's Linux torch wheel adds (CUDA 13.0 libraries: cuda-*,
# nvidia-*, triton). Every file of every pinned version is listed with its sha256.
#   $("$UV" --version)
#   uv pip compile envs/requirements.in --constraint envs/requirements.lock \\
#       --python-version 3.11 --python-platform x86_64-manylinux_2_28 \\
#       --index-url $INDEX --generate-hashes --no-header --no-annotate
# Check (pip resolves it for the target and verifies every hash; downloads ~3.3 GB of wheels):
#   bash envs/compile-cuda-lock.sh --check
EOF
    "$UV" pip compile envs/requirements.in --constraint envs/requirements.lock \
      --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
      --index-url "$INDEX" --generate-hashes --no-header --no-annotate --quiet
  } >"$tmp" || { rm -f "$tmp"; exit 1; }
  mv "$tmp" "$LOCK"
  echo "wrote $LOCK: $(grep -cE '^[A-Za-z0-9]' "$LOCK") packages" >&2
}

check_lock() {
  # pip's --platform takes exact tags: list the manylinux tags a manylinux_2_28 system accepts.
  local platforms=() minor work
  for minor in $(seq 28 -1 17); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
  platforms+=(--platform manylinux2014_x86_64 --platform linux_x86_64)
  work=$(mktemp -d)
  # No pip configuration of this machine (local indexes, find-links, constraints) takes part.
  env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_CONSTRAINT \
    PIP_CONFIG_FILE=/dev/null PIP_NO_CACHE_DIR=1 \
    "$PYTHON" -m pip install --dry-run --ignore-installed --no-deps --require-hashes \
    --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none "${platforms[@]}" \
    --index-url "$INDEX" --report "$work/report.json" --quiet -r "$LOCK"
  "$PYTHON" - "$work/report.json" "$LOCK" <<'EOF'
import json, re, sys

norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
report = json.load(open(sys.argv[1]))
resolved = {norm(i["metadata"]["name"]): i["metadata"]["version"] for i in report["install"]}
pins = {}
for line in open(sys.argv[2]):
    if re.match(r"^[A-Za-z0-9]", line):
        name, version = line.split("==")
        pins[norm(name)] = version.split()[0]
diff = {k: (pins.get(k), resolved.get(k)) for k in set(pins) | set(resolved) if pins.get(k) != resolved.get(k)}
assert not diff, diff
print(f"pip resolves all {len(pins)} pins for cp311 manylinux_2_28_x86_64, every hash checked; "
      f"torch {resolved['torch']}, triton {resolved['triton']}", file=sys.stderr)
EOF
  rm -rf "$work"
}

if [ "${1:-}" = "--check" ]; then
  check_lock
else
  compile_lock
fi
