"""Kill and resume for real: a student's training job is SIGKILLed (with Snakemake itself) after
its first checkpoint; the rerun resumes from that checkpoint and ends with the same weights, bit
for bit, as an uninterrupted run (CPU)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file
from workflow_helpers import (
    REPO,
    absolute_config,
    offline_env,
    require_config_inputs,
    snakemake,
    write_config,
)

from irflow.students.train import COMPLETE_MARKER

pytestmark = [pytest.mark.slow, pytest.mark.models]

STUDENT = "ce-teacher"
MODEL = f"results/students/{STUDENT}/model"
STATS = f"results/students/{STUDENT}/train.stats.json"
CHECKPOINTS = f"results/checkpoints/students/{STUDENT}"


def _config():
    config = absolute_config("configs/ci-studies.yaml")
    # Checkpoint after every optimizer step, so the kill lands between checkpoints.
    config["students"][STUDENT]["training"] = {
        **config["students"][STUDENT]["training"],
        "checkpoint_every_steps": 1,
    }
    return config


def _weights(workdir: Path) -> dict:
    files = sorted((workdir / MODEL).rglob("*.safetensors"))
    assert files, f"no weights under {workdir / MODEL}"
    return {str(f.relative_to(workdir / MODEL)): load_file(f) for f in files}


def _complete_checkpoints(workdir: Path) -> list[Path]:
    folder = workdir / CHECKPOINTS
    if not folder.is_dir():
        return []
    return [p for p in folder.glob("checkpoint-*") if (p / COMPLETE_MARKER).is_file()]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    require_config_inputs(_config())
    workdir = tmp_path_factory.mktemp("uninterrupted")
    snakemake(workdir, _config(), STATS)
    return workdir


def test_killed_training_resumes_to_the_same_weights(uninterrupted, tmp_path):
    workdir = tmp_path / "killed"
    workdir.mkdir()
    # Same training data, built once: copy everything but the student and its record (mtimes
    # kept, so Snakemake sees the inputs as up to date and only the training job runs; the
    # inputs' provenance records come along, since every job verifies its inputs by them).
    shutil.copytree(
        uninterrupted / "results",
        workdir / "results",
        ignore=shutil.ignore_patterns("students", "checkpoints", "train_student"),
    )
    config_path = write_config(workdir, _config())
    command = [
        sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
        "--directory", str(workdir), "--configfile", str(config_path), "--cores", "2",
        "--rerun-incomplete", STATS,
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        cwd=workdir,
        env=offline_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 900
    try:
        while not _complete_checkpoints(workdir):
            assert process.poll() is None, "training finished before a checkpoint was seen"
            assert time.monotonic() < deadline, "no checkpoint within 15 minutes"
            time.sleep(0.2)
    finally:
        # SIGKILL the whole job: Snakemake and the training script, no clean-up handlers.
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert not (workdir / STATS).exists(), "the job was killed before it finished"
    assert not (workdir / MODEL).exists() or not any((workdir / MODEL).iterdir())
    kept = sorted(p.name for p in _complete_checkpoints(workdir))
    assert kept, "the completed checkpoint survives the kill"

    # A killed Snakemake leaves its lock: unlock as a user would, then rerun.
    snakemake(workdir, _config(), "--unlock")
    snakemake(workdir, _config(), "--rerun-incomplete", STATS)
    stats = json.loads((workdir / STATS).read_text())
    assert stats["resumed_from_step"] is not None and stats["resumed_from_step"] >= 1, stats
    reference = json.loads((uninterrupted / STATS).read_text())
    assert reference["resumed_from_step"] is None
    assert stats["steps"] == reference["steps"]

    resumed, straight = _weights(workdir), _weights(uninterrupted)
    assert resumed.keys() == straight.keys()
    for name in straight:
        assert straight[name].keys() == resumed[name].keys()
        for key, tensor in straight[name].items():
            assert resumed[name][key].dtype == tensor.dtype
            assert bool((resumed[name][key] == tensor).all()), f"{name}:{key} differs"
