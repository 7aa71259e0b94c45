"""Facts about where a job ran: the code's git state, package versions, devices, container.

Everything here is read without importing heavy libraries (torch is asked only if the job
already imported it) and without failing: a fact that cannot be told is ``None``.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

# Distributions whose versions decide the numbers; looked up without importing them.
KEY_PACKAGES = (
    "irflow",
    "torch",
    "transformers",
    "sentence-transformers",
    "peft",
    "bitsandbytes",
    "accelerate",
    "snakemake",
    "ir_datasets",
    "ir-measures",
    "pytrec-eval-terrier",
    "bm25s",
    "PyStemmer",
    "pyarrow",
    "pandas",
    "numpy",
    "scipy",
    "safetensors",
    "tokenizers",
    "gguf",
    "llama-cpp-python",
    "matplotlib",
)

# Baked into the images by containers/*.Dockerfile (ENV IRFLOW_IMAGE_*).
IMAGE_ENV = {
    "family": "IRFLOW_IMAGE_FAMILY",
    "version": "IRFLOW_IMAGE_VERSION",
    "revision": "IRFLOW_IMAGE_REVISION",
    "lock_sha256": "IRFLOW_IMAGE_LOCK_SHA256",
}
# Set by the container runtimes themselves.
RUNTIME_ENV = ("APPTAINER_CONTAINER", "SINGULARITY_CONTAINER", "APPTAINER_NAME", "container")


def package_versions(names: Iterable[str] = KEY_PACKAGES) -> dict[str, str | None]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def python_info() -> dict:
    return {
        "version": platform.python_version(),
        "implementation": platform.python_implementation(),
        "executable": sys.executable,
    }


# ---------------------------------------------------------------------------------------------
# Code: the git checkout a job imported irflow from
# ---------------------------------------------------------------------------------------------
def _git(repo: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _head_from_git_dir(repo: Path) -> str | None:
    """The checked-out commit read from .git directly (containers may have no git binary)."""
    git_dir = repo / ".git"
    try:
        head = (git_dir / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        if (git_dir / ref).is_file():
            return (git_dir / ref).read_text().strip()
        packed = git_dir / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[1] == ref:
                    return parts[0]
    except OSError:
        return None
    return None


def git_state(path: str | os.PathLike, code_dir: str | os.PathLike | None = None) -> dict:
    """Commit and dirty flag of the git checkout holding ``path`` (None where it cannot be told).

    Dirty means a tracked file differs from the commit (``git status --untracked-files=no``),
    or a file not ignored and not yet added lies inside ``code_dir`` (the imported package: a
    new module there can change what runs). Untracked files elsewhere do not count: a
    ``results_dir`` inside the checkout, scratch configs and notes hold no code that the commit
    fails to describe, and listing them would cost a walk over every result file per job.
    With ``code_dir`` given, a ``path`` git does not track (an installed copy inside a
    virtual environment that happens to sit in a checkout) is not described by that checkout.
    """
    start = Path(path).resolve()
    top = _git(start, "rev-parse", "--show-toplevel")
    tracked = True
    if top and code_dir is not None:
        tracked = bool((_git(start, "ls-files", "--", str(Path(code_dir).resolve())) or "").strip())
    if top and tracked:
        repo = Path(top.strip())
        commit = (_git(repo, "rev-parse", "HEAD") or "").strip() or None
        changed = _git(repo, "status", "--porcelain", "--untracked-files=no")
        new_code = ""
        if code_dir is not None and changed is not None:
            new_code = _git(
                repo, "status", "--porcelain", "--untracked-files=all", "--", str(code_dir)
            )
        dirty = None
        if changed is not None and new_code is not None:
            dirty = bool(changed.strip()) or any(
                line.startswith("??") for line in new_code.splitlines()
            )
        return {"repository": str(repo), "commit": commit, "dirty": dirty}
    if tracked:
        for candidate in (start, *start.parents):
            if (candidate / ".git").exists():
                return {
                    "repository": str(candidate),
                    "commit": _head_from_git_dir(candidate),
                    "dirty": None,
                }
    # Inside an image built by containers/build.py the revision is baked in.
    return {
        "repository": None,
        "commit": os.environ.get("IRFLOW_IMAGE_REVISION"),
        "dirty": None,
    }


def code_state(package_file: str | os.PathLike | None = None) -> dict:
    """:func:`git_state` of the source tree irflow was imported from (``irflow.__file__``).

    Not the working directory's, nor the scripts': an editable install may point at another
    checkout than the one the workflow runs in, and that checkout's code is what ran.
    """
    if package_file is None:
        import irflow

        package_file = irflow.__file__
    package_dir = Path(package_file).resolve().parent
    return git_state(package_dir, code_dir=package_dir)


# ---------------------------------------------------------------------------------------------
# Machine and container
# ---------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_names() -> list[str]:
    """GPU names, from torch if the job already imported it, else nvidia-smi if present.

    torch is not imported here: a job that never needed it should not pay its import time.
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            return []
        except Exception:  # noqa: BLE001 (a broken driver must not fail a finished job)
            return []
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def numerics() -> dict | None:
    """The settings that decide how reproducible a torch job's numbers are on a GPU, as the job
    left them: deterministic algorithms, cuDNN autotuning, TF32 matmuls, the cuBLAS workspace.
    None for a job that never imported torch (read from ``sys.modules``: never imported here)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    facts = {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }
    backends = getattr(torch, "backends", None)
    cudnn = getattr(backends, "cudnn", None)
    if cudnn is not None:
        facts["cudnn_deterministic"] = bool(cudnn.deterministic)
        facts["cudnn_benchmark"] = bool(cudnn.benchmark)
        facts["cudnn_allow_tf32"] = bool(cudnn.allow_tf32)
    matmul = getattr(getattr(backends, "cuda", None), "matmul", None)
    if matmul is not None:
        facts["cuda_matmul_allow_tf32"] = bool(matmul.allow_tf32)
    facts["float32_matmul_precision"] = torch.get_float32_matmul_precision()
    return facts


def device_info() -> dict:
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpus": gpu_names(),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "numerics": numerics(),
    }


def container_runtime() -> dict | None:
    """Where this process runs: None on the host, else what the image and runtime tell."""
    facts = {key: os.environ[var] for key, var in IMAGE_ENV.items() if os.environ.get(var)}
    for var in RUNTIME_ENV:
        if os.environ.get(var):
            facts[var.lower()] = os.environ[var]
    sif = facts.get("apptainer_container") or facts.get("singularity_container")
    if sif and os.path.basename(sif).endswith((".simg", ".sif")):
        # Snakemake names pulled images by the md5 of their URI; the URI (with its digest when
        # pinned) is the declared container. The SIF itself is not hashed: gigabytes per job.
        facts["image_file"] = os.path.basename(sif)
    return facts or None
