"""Digests of artifacts: a file's size and sha256, a directory's digest over its files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from irflow.io import sha256_file

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
