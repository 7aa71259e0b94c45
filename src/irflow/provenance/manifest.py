"""The provenance manifest: every record behind a set of targets, checked against the files.

``collect_manifest`` walks back from the targets through the records' inputs; the manifest
lists each job, each artifact (verified against the file as it is now), the source files read,
and a summary of commits, packages, devices and containers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from irflow.io import write_json_atomic, write_text_atomic
from irflow.provenance.digests import describe_path
from irflow.provenance.records import index_records, read_record
from irflow.provenance.redaction import redact


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
    results_root = os.path.abspath(os.path.dirname(os.path.normpath(os.fspath(provenance_dir))))
    queue = [os.path.normpath(t) for t in targets]
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
            consumed.setdefault(os.path.normpath(entry["path"]), entry)
            queue.append(os.path.normpath(entry["path"]))

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
    manifest = redact(
        collect_manifest(list(targets), provenance_dir, declared_containers=declared_containers)
    )
    write_json_atomic(json_path, manifest)
    write_text_atomic(markdown_path, manifest_markdown(manifest))
    return manifest
