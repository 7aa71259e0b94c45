"""Run the real workflow (Snakemake in a subprocess) in a scratch directory for tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
MODELS = REPO / "resources" / "models"


def absolute_config(name: str = "configs/ci.yaml", **overrides) -> dict:
    """Load a repository config with its relative paths made absolute (the tests run elsewhere)."""
    config = yaml.safe_load((REPO / name).read_text())
    for dataset in config["datasets"].values():
        if "beir_folder" in dataset:
            dataset["beir_folder"] = str((REPO / dataset["beir_folder"]).resolve())
    for model in config.get("models", {}).values():
        if "path" in model:
            model["path"] = str((REPO / model["path"]).resolve())
    config.update(overrides)
    return config


def write_config(workdir: Path, config: dict) -> Path:
    path = workdir / "test-config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def offline_env(*pythonpath: str | Path) -> dict[str, str]:
    """This process's environment, offline, with ``pythonpath`` folders put first on
    ``PYTHONPATH`` (a ``sitecustomize`` hook there patches the jobs' scripts)."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    # Rule scripts run with the Python on PATH: make it this interpreter's environment.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(
            str(p) for p in (*pythonpath, env.get("PYTHONPATH")) if p
        )
    return env


def snakemake_command(workdir: Path, config_path: Path, *args: str) -> list[str]:
    """The Snakemake command line for the repository's workflow run in ``workdir``."""
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(config_path),
        *args,
    ]


def snakemake(
    workdir: Path,
    config: dict | Path,
    *args: str,
    check: bool = True,
    cores: int | None = 2,
    env: dict[str, str] | None = None,
):
    """Run Snakemake (offline unless ``env`` is given) and return the completed process; with
    ``check`` a failure raises with the tail of its output."""
    config_path = config if isinstance(config, Path) else write_config(workdir, config)
    command = snakemake_command(
        workdir, config_path, *(["--cores", str(cores)] if cores else []), *args
    )
    result = subprocess.run(
        command, capture_output=True, text=True, env=env or offline_env(), cwd=workdir
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake failed ({result.returncode}):\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result


def copy_dataset(name: str, destination: Path) -> Path:
    """A writable copy of one shared collection, to plant faults in."""
    target = destination / name
    shutil.copytree(SHARED_DATA / name, target)
    for path in target.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target


def planned_jobs(dry_run_output: str) -> dict[str, int]:
    """Job counts per rule from the 'Job stats' table of a dry run."""
    counts: dict[str, int] = {}
    lines = dry_run_output.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.startswith("Job stats:"))
    except StopIteration:
        return counts
    for line in lines[start + 3 :]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        if parts[0] != "total":
            counts[parts[0]] = int(parts[1])
    return counts


def slurm_usable() -> bool:
    """Whether ``sinfo`` lists a node that can take jobs."""
    if not shutil.which("sinfo"):
        return False
    try:
        states = subprocess.run(
            ["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20
        ).stdout.split()
    except (subprocess.SubprocessError, OSError):
        return False
    return any(state.rstrip("*") in ("idle", "mix", "alloc") for state in states)


def require_slurm() -> None:
    """Skip the calling test where no Slurm node is usable; fail it instead where
    IRFLOW_REQUIRE_SLURM=1 (set by .ci/run, which starts a cluster first)."""
    if slurm_usable():
        return
    if os.environ.get("IRFLOW_REQUIRE_SLURM") == "1":
        pytest.fail("IRFLOW_REQUIRE_SLURM=1 but no usable Slurm node (run .ci/start-slurm.sh)")
    pytest.skip("no Slurm cluster here (start one with .ci/start-slurm.sh)")
