"""The DL19 part of the CI config through a real Slurm cluster equals the local run, byte for byte.

Needs a running Slurm (CI starts a one-node cluster with .ci/start-slurm.sh). Without one the
test is skipped, unless IRFLOW_REQUIRE_SLURM=1 (set by .ci/run) turns the skip into a failure.
"""

from __future__ import annotations

import pytest
from workflow_helpers import (
    REPO,
    absolute_config,
    require_config_inputs,
    require_slurm,
    snakemake,
)

TARGETS = [
    "results/metrics/dl19/first-stage/given/mean.tsv",
    "results/metrics/dl19/rerank/given/minilm-l6/mean.tsv",
]
COMPARED = [
    *TARGETS,
    "results/metrics/dl19/first-stage/given/per-query.tsv",
    "results/metrics/dl19/rerank/given/minilm-l6/per-query.tsv",
    "results/runs/dl19/first-stage/given.trec",
    "results/runs/dl19/rerank/given/minilm-l6.trec",
]


@pytest.mark.slow
def test_slurm_run_equals_local_run(tmp_path):
    require_slurm()
    config = absolute_config()
    require_config_inputs(config)
    local, cluster = tmp_path / "local", tmp_path / "slurm"
    local.mkdir()
    cluster.mkdir()
    snakemake(local, config, "--profile", str(REPO / "profiles/local"), *TARGETS, cores=2)
    result = snakemake(
        cluster,
        config,
        "--profile",
        str(REPO / "profiles/slurm"),
        "--slurm-keep-successful-logs",
        *TARGETS,
        cores=None,
    )
    # Real sbatch jobs ran: the executor keeps one Slurm log per job.
    slurm_logs = list((cluster / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert len(slurm_logs) >= 4, result.stdout[-3000:] + result.stderr[-3000:]
    for name in COMPARED:
        assert (local / name).read_bytes() == (cluster / name).read_bytes(), name
