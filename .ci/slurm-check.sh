#!/usr/bin/env bash
# Run the DL19 part of the demo twice, locally (profiles/local) and through the real Slurm
# cluster (profiles/slurm), and require byte-identical results.
#
#   .ci/start-slurm.sh                                 # once, as root: a one-node Slurm
#   . .venv/bin/activate && .ci/slurm-check.sh         # from the repository root
#
# Both runs happen in fresh copies of the working tree (tracked and untracked-but-not-ignored
# files; resources/models symlinked), created NEXT TO the repository so that the config's
# relative data paths (../shared/data) resolve the same way. Each copy imports its own
# src/ (PYTHONPATH), not the editable install's. The copies are removed on PASS and kept
# on FAIL (or always with KEEP=1).
#
# Prints PASS or FAIL as its last line; exit status 0 only on PASS.
set -euo pipefail

TARGETS=(
    results/metrics/dl19/first-stage/given/mean.tsv
    results/metrics/dl19/rerank/given/minilm-l6/mean.tsv
)
# Files compared byte for byte between the two runs: the targets and what they are made of.
COMPARE=(
    "${TARGETS[@]}"
    results/metrics/dl19/first-stage/given/per-query.tsv
    results/metrics/dl19/rerank/given/minilm-l6/per-query.tsv
    results/runs/dl19/first-stage/given.trec
    results/runs/dl19/rerank/given/minilm-l6.trec
)

ROOT=$(pwd)
PARENT=$(dirname "$ROOT")
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

say() { printf '[slurm-check] %s\n' "$*"; }
fail() { say "FAIL: $*"; echo "FAIL"; exit 1; }

# --- preconditions ---------------------------------------------------------------------------
[[ -f $ROOT/Snakefile && -f $ROOT/profiles/slurm/config.yaml ]] || fail "run from the repository root"
command -v snakemake >/dev/null || fail "snakemake not on PATH: activate the venv (. .venv/bin/activate)"
[[ -n ${VIRTUAL_ENV:-} ]] || say "warning: VIRTUAL_ENV unset; jobs use whatever python is on PATH"
command -v sbatch >/dev/null || fail "sbatch not found: run .ci/start-slurm.sh first"
sinfo -h -o '%t' 2>/dev/null | grep -qE '^(idle|mix|alloc)' || fail "no usable Slurm node (sinfo): run .ci/start-slurm.sh"
[[ -d $ROOT/resources/models ]] || fail "resources/models missing (run the project's set-up first)"

# --- copies of the working tree ---------------------------------------------------------------
make_copy() {  # make_copy NAME -> prints the new directory
    local dest
    dest=$(mktemp -d "$PARENT/$(basename "$ROOT")-ci-$1.XXXXXX")
    (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard) |
        (cd "$ROOT" && xargs -0 -r cp --parents -P -t "$dest" 2>/dev/null) || {
        # git ls-files lists deleted-but-tracked files too: copy what exists, one by one.
        (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard) |
            while IFS= read -r -d '' f; do
                [[ -e $ROOT/$f || -L $ROOT/$f ]] && (cd "$ROOT" && cp --parents -P "$f" "$dest")
            done
    }
    mkdir -p "$dest/resources"
    ln -s "$ROOT/resources/models" "$dest/resources/models"
    echo "$dest"
}

LOCAL_DIR=$(make_copy local)
SLURM_DIR=$(make_copy slurm)
cleanup() {
    local rc=$?
    if [[ $rc -eq 0 && ${KEEP:-0} != 1 ]]; then
        rm -rf "$LOCAL_DIR" "$SLURM_DIR"
    else
        say "kept the copies: $LOCAL_DIR $SLURM_DIR"
    fi
}
trap cleanup EXIT
say "local copy: $LOCAL_DIR"
say "slurm copy: $SLURM_DIR"

# --- the jobs' environment -------------------------------------------------------------------
# sbatch --export=ALL hands this shell's environment to the job: check that a Slurm job sees
# the venv's python and the copy's irflow before spending minutes on the workflow.
probe=$(cd "$SLURM_DIR" && PYTHONPATH="$SLURM_DIR/src" sbatch --wait --quiet -J irflow-env-probe -t 2 --mem 500 \
    -o "$SLURM_DIR/env-probe.out" \
    --wrap 'python -c "import sys, irflow, snakemake; print(sys.executable, irflow.__file__, snakemake.__version__, sep=chr(10))"' &&
    cat "$SLURM_DIR/env-probe.out") || fail "environment probe job failed"
say "a Slurm job sees: $(echo "$probe" | tr '\n' ' ')"
[[ $(echo "$probe" | sed -n 1p) == "$(command -v python)" || $(echo "$probe" | sed -n 1p) -ef $(command -v python) ]] ||
    fail "the job's python ($(echo "$probe" | sed -n 1p)) is not this shell's ($(command -v python))"
[[ $(echo "$probe" | sed -n 2p) == "$SLURM_DIR/src/irflow/__init__.py" ]] ||
    fail "the job imports irflow from $(echo "$probe" | sed -n 2p), not from the copy"

# --- the two runs ----------------------------------------------------------------------------
run_snakemake() {  # run_snakemake DIR PROFILE LOG [extra args]
    local dir=$1 profile=$2 logf=$3
    shift 3
    local t0=$SECONDS
    if (cd "$dir" && PYTHONPATH="$dir/src" snakemake --profile "profiles/$profile" "$@" "${TARGETS[@]}") \
        >"$logf" 2>&1; then
        say "$profile run: $((SECONDS - t0)) s wall"
    else
        tail -n 60 "$logf"
        fail "$profile run failed after $((SECONDS - t0)) s (log: $logf)"
    fi
}

run_snakemake "$LOCAL_DIR" local "$LOCAL_DIR/snakemake-local.log"
run_snakemake "$SLURM_DIR" slurm "$SLURM_DIR/snakemake-slurm.log" --slurm-keep-successful-logs

# --- were these real Slurm jobs? ----------------------------------------------------------------
steps_done() { grep -oE '[0-9]+ of [0-9]+ steps \(100%\) done' "$1" | tail -n1 | cut -d' ' -f1; }
local_steps=$(steps_done "$LOCAL_DIR/snakemake-local.log")
slurm_steps=$(steps_done "$SLURM_DIR/snakemake-slurm.log")
run_id=$(grep -oE 'SLURM run ID: [A-Za-z0-9_-]+' "$SLURM_DIR/snakemake-slurm.log" | head -n1 | cut -d' ' -f4)
mapfile -t job_ids < <(grep -oE 'has been submitted with SLURM jobid [0-9]+' "$SLURM_DIR/snakemake-slurm.log" |
    awk '{print $NF}' | sort -un)
mapfile -t slurm_logs < <(find "$SLURM_DIR/.snakemake/slurm_logs" -name '*.log' -type f 2>/dev/null | sort)
[[ -n $local_steps && -n $slurm_steps ]] || fail "could not read the step counts from the logs"
[[ $local_steps == "$slurm_steps" ]] || fail "local ran $local_steps steps, slurm $slurm_steps"
# One sbatch job per step; more if `retries` re-submitted a failed attempt.
(( ${#job_ids[@]} >= slurm_steps )) ||
    fail "expected >= $slurm_steps sbatch submissions, the log shows ${#job_ids[@]}"
(( ${#job_ids[@]} == slurm_steps )) || say "note: ${#job_ids[@]} submissions for $slurm_steps steps (retries)"
for id in "${job_ids[@]}"; do
    printf '%s\n' "${slurm_logs[@]}" | grep -q "/$id\.log\$" ||
        fail "no Slurm log for job $id under .snakemake/slurm_logs"
done
# Finished jobs stay visible to squeue for MinJobAge (300 s on the CI cluster).
states=$(squeue --states=all --noheader --name "$run_id" --format '%T' 2>/dev/null | sort | uniq -c | xargs || true)
say "Slurm run ID $run_id: ${#job_ids[@]} sbatch jobs (${job_ids[*]}), ${#slurm_logs[@]} job logs; squeue now: ${states:-nothing (older than MinJobAge)}"

# --- same bytes? -----------------------------------------------------------------------------
status=0
for f in "${COMPARE[@]}"; do
    if [[ ! -f $LOCAL_DIR/$f || ! -f $SLURM_DIR/$f ]]; then
        say "missing: $f"; status=1
    elif cmp -s "$LOCAL_DIR/$f" "$SLURM_DIR/$f"; then
        say "identical: $f ($(sha256sum <"$SLURM_DIR/$f" | cut -c1-16))"
    else
        say "DIFFERENT: $f"; diff "$LOCAL_DIR/$f" "$SLURM_DIR/$f" | head -n 10 || true; status=1
    fi
done
(( status == 0 )) || fail "local and Slurm results differ"
say "$(cat "$SLURM_DIR/${TARGETS[1]}" | tr '\t' ' ' | paste -sd ';' -)"
say "PASS: $slurm_steps rule jobs ran as real Slurm jobs and reproduced the local run byte for byte"
echo "PASS"
