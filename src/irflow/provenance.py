"""Per-artifact provenance: what produced a file, from what, with which code, packages and machine.

One JSON record per job, ``<results>/provenance/<rule>/<key>.json`` beside the job's log
``<results>/logs/<rule>/<key>.log``. The record is written by :func:`irflow.job.start`'s exit
hook; this module only gathers facts and never sees Snakemake objects.

Record schema (``schema: irflow.provenance/1``)::

    rule, wildcards, params           what the job was asked to do (params JSON-safe, redacted)
    inputs, outputs                   [{name, path, kind: file|directory|missing, size, sha256,
                                        files (directories only)}]
    code                              {commit, dirty, repository} of the workflow's git checkout
    packages, python                  versions of the key packages (importlib.metadata, no import)
    container                         {declared (when known), runtime: where the job ran}
    device                            {cpu, gpus, cpu_count, hostname}
    seed, threads                     config seed and the job's threads
    started, ended, wall_s            UTC ISO times and seconds

Secrets never reach a record (nor a log or report that goes through :func:`redact`): values of
keys named like credentials, values of environment variables named like credentials, and
strings shaped like well-known token formats are replaced with ``[REDACTED]``. Environment
variables themselves are not recorded.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from irflow.io import sha256_file, write_json_atomic

SCHEMA = "irflow.provenance/1"
REDACTED = "[REDACTED]"

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

# Names of keys / environment variables whose values are credentials.
SECRET_NAME_RE = re.compile(
    r"(^|_)TOKEN$|_KEY$|^API_?KEY$|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTHORIZATION",
    re.IGNORECASE,
)
# Well-known token shapes (Hugging Face, GitHub, OpenAI-style, AWS access key ids, JWTs).
TOKEN_VALUE_RE = re.compile(
    r"\b(hf_[A-Za-z0-9]{20,}|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"
    r"|sk-[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}|eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]+)"
)
# Environment values shorter than this are not treated as secrets to search for: a variable
# such as SOME_KEY=1 would otherwise blank every "1" in a record.
MIN_SECRET_LENGTH = 8


# ---------------------------------------------------------------------------------------------
# Redaction
# ---------------------------------------------------------------------------------------------
def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME_RE.search(str(name)))


def environment_secrets(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of environment variables named like credentials (longest first, for replacing)."""
    environ = os.environ if environ is None else environ
    values = {
        value
        for name, value in environ.items()
        if is_secret_name(name) and len(value) >= MIN_SECRET_LENGTH
    }
    return sorted(values, key=len, reverse=True)


def redact_text(text: str, secrets: Iterable[str] | None = None) -> str:
    for secret in environment_secrets() if secrets is None else secrets:
        text = text.replace(secret, REDACTED)
    return TOKEN_VALUE_RE.sub(REDACTED, text)


def redact(value, secrets: Iterable[str] | None = None):
    """A copy of a JSON-like value with credentials replaced (by key name, env value, or shape)."""
    secrets = environment_secrets() if secrets is None else list(secrets)
    if isinstance(value, Mapping):
        return {
            str(k): REDACTED if is_secret_name(k) and v not in (None, "") else redact(v, secrets)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v, secrets) for v in value]
    if isinstance(value, str):
        return redact_text(value, secrets)
    return value


def json_safe(value):
    """Turn Snakemake params (Namedlists, paths, sets, numpy scalars...) into plain JSON values."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, list | tuple | set | frozenset):
        items = [json_safe(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, set | frozenset) else items
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        try:
            return json_safe(value.item())
        except (TypeError, ValueError):
            pass
    return repr(value)


# ---------------------------------------------------------------------------------------------
# Digests
# ---------------------------------------------------------------------------------------------
# Snakemake's marker in directory outputs: written after the job, its content is a time.
IGNORED_IN_DIRECTORIES = frozenset({".snakemake_timestamp"})


def directory_digest(path: str | os.PathLike) -> tuple[str, int, int]:
    """sha256 over the sorted relative paths and file digests of a directory; (digest, size, n).

    Written here rather than taken from a library because the digest must be stable across
    machines and file systems: only relative POSIX paths and contents enter it (no mtimes,
    permissions or ordering of os.walk), and Snakemake's ``.snakemake_timestamp`` marker is
    left out (it is added after the job and holds no content of the artifact).
    """
    root = Path(path)
    digest = hashlib.sha256()
    size = 0
    files = sorted(
        (p for p in root.rglob("*") if p.is_file() and p.name not in IGNORED_IN_DIRECTORIES),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    for file in files:
        rel = file.relative_to(root).as_posix()
        digest.update(f"{rel}\0{sha256_file(file)}\n".encode())
        size += file.stat().st_size
    return digest.hexdigest(), size, len(files)


def describe_path(path: str | os.PathLike, name: str | None = None) -> dict:
    """{name, path, kind, size, sha256[, files]} of a file or directory (kind "missing")."""
    entry: dict = {"path": os.fspath(path)}
    if name:
        entry["name"] = name
    target = Path(path)
    if target.is_dir():
        digest, size, count = directory_digest(target)
        entry.update(kind="directory", size=size, files=count, sha256=digest)
    elif target.is_file():
        entry.update(kind="file", size=target.stat().st_size, sha256=sha256_file(target))
    else:
        entry.update(kind="missing", size=None, sha256=None)
    return entry


# ---------------------------------------------------------------------------------------------
# Environment facts
# ---------------------------------------------------------------------------------------------
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


def git_state(path: str | os.PathLike) -> dict:
    """Commit and dirty flag of the git checkout holding ``path`` (dirty: tracked changes or new
    files not ignored; None where it cannot be told)."""
    start = Path(path).resolve()
    top = _git(start, "rev-parse", "--show-toplevel")
    if top:
        repo = Path(top.strip())
        commit = (_git(repo, "rev-parse", "HEAD") or "").strip() or None
        status = _git(repo, "status", "--porcelain")
        return {
            "repository": str(repo),
            "commit": commit,
            "dirty": None if status is None else bool(status.strip()),
        }
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


def device_info() -> dict:
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpus": gpu_names(),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
    }


# Baked into the images by containers/*.Dockerfile (ENV IRFLOW_IMAGE_*).
IMAGE_ENV = {
    "family": "IRFLOW_IMAGE_FAMILY",
    "version": "IRFLOW_IMAGE_VERSION",
    "revision": "IRFLOW_IMAGE_REVISION",
    "lock_sha256": "IRFLOW_IMAGE_LOCK_SHA256",
}
# Set by the container runtimes themselves.
RUNTIME_ENV = ("APPTAINER_CONTAINER", "SINGULARITY_CONTAINER", "APPTAINER_NAME", "container")


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


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------
def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def process_start_time() -> float:
    """Epoch seconds when this process started (so wall time includes imports and model loads).

    Read from /proc (Linux) because psutil is not in the eval image; falls back to now.
    """
    try:
        stat = Path("/proc/self/stat").read_text()
        # Field 22 (starttime, clock ticks since boot) counted after the ')' closing the name.
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return int(line.split()[1]) + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        pass
    return time.time()


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def record_path(results_dir: str | os.PathLike, log_path: str | None, rule: str, key: str) -> Path:
    """The job log path mirrored: <results>/logs/<rule>/<key>.log -> provenance/<rule>/<key>.json"""
    results = Path(results_dir)
    if log_path:
        log = Path(log_path)
        try:
            rel = log.relative_to(results / "logs")
            return results / "provenance" / rel.with_suffix(".json")
        except ValueError:
            pass
    return results / "provenance" / rule / f"{key or 'job'}.json"


def build_record(
    *,
    rule: str,
    wildcards: Mapping,
    params: Mapping,
    inputs: Iterable[tuple[str | None, str]],
    outputs: Iterable[tuple[str | None, str]],
    repo_path: str | os.PathLike,
    config: Mapping,
    threads: int | None,
    started: str,
    ended: str,
    wall_s: float,
    declared_container: str | None = None,
    log: str | None = None,
) -> dict:
    secrets = environment_secrets()
    record = {
        "schema": SCHEMA,
        "rule": rule,
        "wildcards": json_safe(dict(wildcards)),
        "params": json_safe(dict(params)),
        "inputs": [describe_path(path, name) for name, path in inputs],
        "outputs": [describe_path(path, name) for name, path in outputs],
        "log": log,
        "code": git_state(repo_path),
        "packages": package_versions(),
        "python": python_info(),
        "container": {
            "declared": declared_container,
            "images": json_safe(config.get("containers", {})),
            "runtime": container_runtime(),
        },
        "device": device_info(),
        "seed": config.get("seed"),
        "threads": threads,
        "started": started,
        "ended": ended,
        "wall_s": round(wall_s, 3),
    }
    return redact(record, secrets)


def write_record(path: str | os.PathLike, record: Mapping) -> None:
    write_json_atomic(path, record)


def read_record(path: str | os.PathLike) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# Manifest: every record behind a set of targets
# ---------------------------------------------------------------------------------------------
def _norm(path: str) -> str:
    return os.path.normpath(path)


def index_records(provenance_dir: str | os.PathLike) -> dict[str, Path]:
    """Output path -> the record file of the job that produced it (newest record wins)."""
    index: dict[str, tuple[str, Path]] = {}
    root = Path(provenance_dir)
    for file in sorted(root.rglob("*.json")) if root.is_dir() else []:
        try:
            record = read_record(file)
        except (OSError, json.JSONDecodeError):
            continue
        if record.get("schema") != SCHEMA:
            continue
        for output in record.get("outputs", []):
            key = _norm(output["path"])
            ended = record.get("ended", "")
            if key not in index or index[key][0] <= ended:
                index[key] = (ended, file)
    return {path: file for path, (_, file) in index.items()}


def collect_manifest(
    targets: Iterable[str],
    provenance_dir: str | os.PathLike,
    verify: bool = True,
    declared_containers: Mapping[str, str] | None = None,
) -> dict:
    """The records of the jobs that produced ``targets`` and, transitively, their inputs.

    With ``verify`` every recorded output digest is compared with the file as it is now; a
    difference marks the record stale (the file changed after the job that recorded it); an
    output that no longer exists is listed as missing instead.
    Inputs no job produced are listed as sources when they lie outside the results folder
    (source data such as a BEIR folder's files, with the digest the consuming job recorded) and
    as unrecorded when inside it (built before records existed, or by hand).
    """
    index = index_records(provenance_dir)
    results_root = os.path.abspath(os.path.dirname(_norm(os.fspath(provenance_dir))))
    queue = [_norm(t) for t in targets]
    seen_paths: set[str] = set()
    records: dict[Path, dict] = {}
    unrecorded: list[str] = []
    sources: dict[str, dict] = {}
    consumed: dict[str, dict] = {}  # input path -> the input entry of a record that read it
    while queue:
        path = queue.pop(0)
        if path in seen_paths:
            continue
        seen_paths.add(path)
        file = index.get(path)
        if file is None:
            if os.path.abspath(path).startswith(results_root + os.sep):
                unrecorded.append(path)
            else:
                entry = consumed.get(path, {})
                sources[path] = {
                    "path": path,
                    "sha256": entry.get("sha256"),
                    "size": entry.get("size"),
                }
            continue
        if file in records:
            continue
        record = read_record(file)
        if declared_containers and record.get("container", {}).get("declared") is None:
            # A job cannot see its rule's container directive; the workflow can.
            record.setdefault("container", {})["declared"] = declared_containers.get(record["rule"])
        records[file] = record
        for entry in record.get("inputs", []):
            consumed.setdefault(_norm(entry["path"]), entry)
            queue.append(_norm(entry["path"]))

    artifacts = []
    for file, record in records.items():
        for output in record["outputs"]:
            entry = {
                "path": output["path"],
                "kind": output["kind"],
                "size": output["size"],
                "sha256": output["sha256"],
                "rule": record["rule"],
                "record": str(file),
            }
            if verify:
                now = describe_path(output["path"])
                entry["verified"] = now["sha256"] == output["sha256"]
                entry["missing"] = now["kind"] == "missing"
            artifacts.append(entry)
    artifacts.sort(key=lambda a: a["path"])

    def distinct(values):
        return [json.loads(v) for v in sorted({json.dumps(v, sort_keys=True) for v in values})]

    rules = sorted({r["rule"] for r in records.values()})
    summary = {
        "jobs": len(records),
        "rules": rules,
        "commits": distinct(r.get("code", {}) for r in records.values()),
        "python": distinct(r["python"]["version"] for r in records.values()),
        "devices": distinct(
            {"cpu": r["device"]["cpu"], "gpus": r["device"]["gpus"]} for r in records.values()
        ),
        "containers": distinct(r.get("container", {}) for r in records.values()),
        "packages": _package_summary(records.values()),
        "seeds": sorted({r.get("seed") for r in records.values()}, key=repr),
        "wall_s": round(sum(r.get("wall_s", 0) for r in records.values()), 3),
    }
    return {
        "schema": "irflow.provenance-manifest/1",
        "targets": [str(t) for t in targets],
        "summary": summary,
        "artifacts": artifacts,
        "unrecorded": sorted(unrecorded),
        "sources": [sources[path] for path in sorted(sources)],
        "stale": [
            a["path"] for a in artifacts if a.get("verified") is False and not a.get("missing")
        ],
        # Recorded outputs deleted since (e.g. a killed rerun's): rebuild them to restore them.
        "missing": [a["path"] for a in artifacts if a.get("missing")],
        "jobs": [
            {
                "record": str(file),
                "rule": r["rule"],
                "wildcards": r["wildcards"],
                "params": r["params"],
                "inputs": [{k: i.get(k) for k in ("path", "sha256", "size")} for i in r["inputs"]],
                "outputs": [o["path"] for o in r["outputs"]],
                "commit": r.get("code", {}).get("commit"),
                "dirty": r.get("code", {}).get("dirty"),
                "container": r.get("container", {}),
                "device": r.get("device", {}),
                "threads": r.get("threads"),
                "started": r.get("started"),
                "wall_s": r.get("wall_s"),
            }
            for file, r in sorted(records.items(), key=lambda item: str(item[0]))
        ],
    }


def _package_summary(records) -> dict[str, list[str]]:
    """Package -> the distinct versions the jobs ran with (one entry unless environments mixed)."""
    versions: dict[str, set[str]] = {}
    for record in records:
        for name, version in record.get("packages", {}).items():
            if version is not None:
                versions.setdefault(name, set()).add(version)
    return {name: sorted(found) for name, found in sorted(versions.items())}


def _device_text(device: Mapping) -> str:
    gpus = ", ".join(device.get("gpus") or [])
    return f"{device.get('cpu')}" + (f" + {gpus}" if gpus else "")


def manifest_markdown(manifest: Mapping) -> str:
    summary = manifest["summary"]
    lines = ["# Provenance manifest", ""]
    commits = ", ".join(
        f"{c.get('commit') or 'unknown'}{' (dirty)' if c.get('dirty') else ''}"
        for c in summary["commits"]
    )
    lines += [
        f"- jobs: {summary['jobs']} ({', '.join(summary['rules'])})",
        f"- commit: {commits or 'unknown'}",
        f"- python: {', '.join(summary['python'])}",
        f"- seeds: {', '.join(map(str, summary['seeds']))}",
        f"- devices: {'; '.join(_device_text(d) for d in summary['devices'])}",
        f"- stale records: {len(manifest['stale'])}",
        f"- recorded outputs now missing: {len(manifest.get('missing', []))}",
        f"- paths without a record: {len(manifest['unrecorded'])}",
        f"- source files read: {len(manifest.get('sources', []))}",
        "",
        "| artifact | rule | size | sha256 |",
        "|---|---|---:|---|",
    ]
    for artifact in manifest["artifacts"]:
        mark = ""
        if artifact.get("missing"):
            mark = " (MISSING)"
        elif not artifact.get("verified", True):
            mark = " (STALE)"
        lines.append(
            f"| `{artifact['path']}` | {artifact['rule']} | {artifact['size']} | "
            f"`{(artifact['sha256'] or '')[:16]}`{mark} |"
        )
    if manifest.get("sources"):
        lines += ["", "| source file | size | sha256 |", "|---|---:|---|"]
        lines += [
            f"| `{src['path']}` | {src['size']} | `{(src['sha256'] or '')[:16]}` |"
            for src in manifest["sources"]
        ]
    lines += ["", "| package | version |", "|---|---|"]
    lines += [f"| {name} | {', '.join(v)} |" for name, v in summary["packages"].items()]
    return "\n".join(lines) + "\n"


def write_manifest(
    targets: Iterable[str],
    provenance_dir: str | os.PathLike,
    json_path: str | os.PathLike,
    markdown_path: str | os.PathLike,
    declared_containers: Mapping[str, str] | None = None,
) -> dict:
    from irflow.io import write_text_atomic

    manifest = redact(
        collect_manifest(list(targets), provenance_dir, declared_containers=declared_containers)
    )
    write_json_atomic(json_path, manifest)
    write_text_atomic(markdown_path, manifest_markdown(manifest))
    return manifest
