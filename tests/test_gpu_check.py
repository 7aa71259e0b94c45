"""The one-GPU check (benchmarks/gpu_check.py) in its CI mode on CPU: every check present, each
ok or skipped as GPU-only, and the CPU-vs-device agreement figures in the JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
CHECKS = [
    "teacher-bi-encoder",
    "teacher-cross-encoder",
    "dense-encode-retrieve",
    "student-cross-encoder",
    "student-bi-encoder",
    "student-adamw8bit",
    "decoder-lora",
    "decoder-moe-lora",
    "bf16-sdpa-load",
    "flash-attention",
    "agreement",
]
GPU_ONLY = {"student-adamw8bit", "bf16-sdpa-load", "flash-attention"}
# What the GPU machine lacks: importing any of them fails in the child process. (bitsandbytes
# is not stubbed like this: peft probes it with find_spec, which a stub answers; only the
# GPU-only AdamW8bit check imports it, and that one is skipped on CPU.)
ABSENT = ["snakemake", "bm25s", "ir_measures"]


@pytest.mark.slow
def test_gpu_check_runs_on_cpu_in_quick_mode(tmp_path):
    if not (REPO / "resources" / "models" / "all-mpnet-base-v2").is_dir():
        pytest.skip("resources/models not set up (scripts/setup.sh)")
    if not (REPO.parent / "shared" / "data" / "dl19-bm25-top100").is_dir():
        pytest.skip("../shared/data/dl19-bm25-top100 is missing")
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    for name in ABSENT:
        (blocked / f"{name}.py").write_text(f"raise ImportError('{name} is not installed')\n")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONPATH": str(blocked),
    }
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_check-cpu.json").read_text())
    assert (out / "gpu_check-cpu.md").is_file()
    statuses = {row["name"]: row["status"] for row in report["checks"]}
    assert list(statuses) == CHECKS
    for name, status in statuses.items():
        assert status == ("skipped: GPU-only" if name in GPU_ONLY else "ok"), (name, status)
    assert report["device"] == "cpu" and report["failed"] == []
    agreement = next(row for row in report["checks"] if row["name"] == "agreement")["details"]
    assert agreement["pairs"] == 200 and agreement["queries"] == 10
    assert agreement["max_abs_diff"] <= agreement["tolerance"] == 1e-2
    assert len(agreement["kendall_tau_per_query"]) == 10
    assert agreement["kendall_tau_min"] == pytest.approx(1.0)
    assert "CPU compared with CPU" in agreement["note"]
    for row in report["checks"]:
        if row["status"] == "ok" and row["name"] != "agreement":
            assert row["throughput"] and row["flop_per_s"] > 0 and row["mfu"] is None
            assert row["peak_rss_mb"] > 0
