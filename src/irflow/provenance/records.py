"""Per-job records: build, write, read, and find the record of the job that made a path.

A record sits at ``<results>/provenance/<rule>/<key>.json``, mirroring the job's log
``<results>/logs/<rule>/<key>.log``. The record path follows from the producing rule and its
wildcards, which a consumer does not know; so beside each record the job also writes one
pointer per output, ``<results>/provenance/.by-output/<output relative to results>.ref``,
holding the record's path relative to the results folder. Finding an input's producer is
then one small read (:class:`RecordIndex`); a scan over every record, once per process, is
only the fallback for outputs recorded before pointers existed (or whose pointer is gone).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path

from irflow.io import write_json_atomic, write_text_atomic
from irflow.provenance.digests import describe_path
from irflow.provenance.environment import (
    container_runtime,
    device_info,
    package_versions,
    python_info,
)
from irflow.provenance.hub import hub_models
from irflow.provenance.redaction import environment_secrets, redact

SCHEMA = "irflow.provenance/1"
POINTERS = ".by-output"


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
# Times
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


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------
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
    code: Mapping,
    config: Mapping,
    threads: int | None,
    started: str,
    ended: str,
    wall_s: float,
    declared_container: str | None = None,
    log: str | None = None,
    described: Mapping[str, Mapping] | None = None,
) -> dict:
    """The record of one finished job.

    ``code`` is :func:`~irflow.provenance.environment.code_state` (the checkout irflow came
    from). ``described`` maps input paths to the :func:`describe_path` entries already taken
    (by the input verification at the job's start), so no input is hashed twice.
    """
    described = described or {}
    secrets = environment_secrets()

    def entry(name, path):
        known = described.get(path)
        if known is None:
            return describe_path(path, name)
        known = {k: v for k, v in known.items() if k != "name"}
        return {"path": known.pop("path"), **({"name": name} if name else {}), **known}

    record = {
        "schema": SCHEMA,
        "rule": rule,
        "wildcards": json_safe(dict(wildcards)),
        "params": json_safe(dict(params)),
        "inputs": [entry(name, path) for name, path in inputs],
        "outputs": [describe_path(path, name) for name, path in outputs],
        "log": log,
        "code": dict(code),
        "packages": package_versions(),
        "python": python_info(),
        "container": {
            "declared": declared_container,
            "images": json_safe(config.get("containers", {})),
            "runtime": container_runtime(),
        },
        "device": device_info(),
        "hub_models": hub_models(params),
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


def _norm(path: str) -> str:
    return os.path.normpath(path)


def _inside(path: str | os.PathLike, root: str | os.PathLike) -> str | None:
    """``path`` relative to ``root`` (POSIX), or None when it lies outside it."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    if rel == os.curdir or rel == os.pardir or rel.startswith(os.pardir + os.sep):
        return None
    return Path(rel).as_posix()


def pointer_path(results_dir: str | os.PathLike, output: str | os.PathLike) -> Path | None:
    """Where the pointer from ``output`` to its record lives (None outside the results folder)."""
    rel = _inside(output, results_dir)
    if rel is None:
        return None
    return Path(results_dir) / "provenance" / POINTERS / f"{rel}.ref"


def write_pointers(
    results_dir: str | os.PathLike, record_file: str | os.PathLike, record: Mapping
) -> None:
    """One pointer per output of ``record`` inside the results folder, to ``record_file``."""
    target = _inside(record_file, results_dir) or os.path.abspath(record_file)
    for output in record.get("outputs", []):
        pointer = pointer_path(results_dir, output["path"])
        if pointer is not None:
            write_text_atomic(pointer, target + "\n")


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


class RecordIndex:
    """Finds the record of the job that produced a path under one results folder.

    Each lookup reads the path's pointer; the full scan (:func:`index_records`) runs at most
    once, and only when a pointer is missing or points at a record that does not list the
    path. Records read are kept, so walking a graph reads each at most once.
    """

    def __init__(self, results_dir: str | os.PathLike):
        self.results_dir = Path(results_dir)
        self.provenance_dir = self.results_dir / "provenance"
        self._records: dict[Path, dict | None] = {}
        self._scanned: dict[str, Path] | None = None

    def record(self, file: str | os.PathLike) -> dict | None:
        file = Path(file)
        if file not in self._records:
            try:
                record = read_record(file)
            except (OSError, json.JSONDecodeError):
                record = None
            if record is not None and record.get("schema") != SCHEMA:
                record = None
            self._records[file] = record
        return self._records[file]

    def _output_entry(self, file: Path, path: str) -> dict | None:
        record = self.record(file)
        if record is None:
            return None
        wanted = os.path.abspath(path)
        for output in record.get("outputs", []):
            if os.path.abspath(output["path"]) == wanted:
                return output
        return None

    def _from_pointer(self, path: str) -> Path | None:
        pointer = pointer_path(self.results_dir, path)
        if pointer is None or not pointer.is_file():
            return None
        target = Path(pointer.read_text(encoding="utf-8").strip())
        return target if target.is_absolute() else self.results_dir / target

    def _from_scan(self, path: str) -> Path | None:
        if self._scanned is None:
            scanned = index_records(self.provenance_dir)
            self._scanned = {os.path.abspath(out): file for out, file in scanned.items()}
        return self._scanned.get(os.path.abspath(path))

    def lookup(self, path: str | os.PathLike) -> tuple[Path, dict, dict] | None:
        """(record file, record, its output entry) of the job that wrote ``path`` exactly."""
        path = os.fspath(path)
        for find in (self._from_pointer, self._from_scan):
            file = find(path)
            if file is not None:
                entry = self._output_entry(file, path)
                if entry is not None:
                    return file, self._records[file], entry
        return None

    def producer(self, path: str | os.PathLike) -> tuple[str, Path, dict, dict] | None:
        """(artifact, record file, record, output entry) of ``path`` or of the recorded
        directory output that holds it (a file inside a model folder, say)."""
        wanted = Path(os.path.normpath(os.fspath(path)))
        candidate = wanted
        while _inside(candidate, self.results_dir) is not None:
            found = self.lookup(candidate)
            if found is not None and (candidate == wanted or found[2].get("kind") == "directory"):
                return (str(candidate), *found)
            candidate = candidate.parent
        return None
