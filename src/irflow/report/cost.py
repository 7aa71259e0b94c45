"""What each job cost: Snakemake's ``benchmark:`` files summed per rule family and per study arm.

Every rule writes ``<results>/benchmarks/<rule>/<key>.tsv`` with Snakemake's columns
(``s`` wall seconds, ``cpu_time`` seconds, ``max_rss`` MB, ``io_in``/``io_out`` MB, ...); a
file holds one row per benchmark repetition, and a job counts its mean. GPU time is not in
these files (Snakemake measures processes, not devices): a GPU job's share shows as wall time.

A job belongs to a study arm when one segment of its benchmark key is the arm's student name,
or the student name followed by a variant suffix (``<student>.untrained``,
``<student>.dim<N>``) or a seed replicate's (``<student>.seed<k>``, ``<student>.seed<k>.dim<N>``),
as the study rules name their runs. Shared upstream artifacts (data,
first stages, teacher scores) belong to no arm: they are paid once for every arm.

Table ``<results>/tables/cost.tsv`` columns: ``scope`` (``rule``, ``arm``, ``total``),
``study``, ``arm``, ``rule``, ``jobs``, ``wall_s``, ``cpu_s``, ``max_rss_mb`` (peak of
the jobs), ``io_in_mb``, ``io_out_mb``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from irflow.io import InputError, atomic_output

COLUMNS = [
    "scope",
    "study",
    "arm",
    "rule",
    "jobs",
    "wall_s",
    "cpu_s",
    "max_rss_mb",
    "io_in_mb",
    "io_out_mb",
]
# Snakemake column -> this table's column, and how jobs combine.
SUMMED = {"s": "wall_s", "cpu_time": "cpu_s", "io_in": "io_in_mb", "io_out": "io_out_mb"}
PEAK = {"max_rss": "max_rss_mb"}
VARIANT_RE = re.compile(r"^(seed\d+|untrained|dim\d+|seed\d+\.(untrained|dim\d+))$")


def read_benchmarks(benchmark_dir: str | os.PathLike) -> pd.DataFrame:
    """One row per job: rule, key (path below the rule's folder, no suffix) and mean figures."""
    root = Path(benchmark_dir)
    rows = []
    for path in sorted(root.rglob("*.tsv")) if root.is_dir() else []:
        rel = path.relative_to(root)
        if len(rel.parts) < 2:
            continue
        try:
            table = pd.read_csv(path, sep="\t")
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            raise InputError(f"{path}: not a Snakemake benchmark file ({err})") from None
        missing = [c for c in ("s", "max_rss") if c not in table.columns]
        if missing:
            raise InputError(f"{path}: not a Snakemake benchmark file (no column {missing[0]!r})")
        row = {"rule": rel.parts[0], "key": rel.with_suffix("").as_posix().split("/", 1)[1]}
        for column in (*SUMMED, *PEAK):
            values = pd.to_numeric(table[column], errors="coerce") if column in table else None
            # Snakemake writes "NA" where it could not measure (e.g. a job shorter than its
            # sampling interval); such a figure counts as 0, not as a missing job.
            row[column] = (
                float(values.mean()) if values is not None and values.notna().any() else 0.0
            )
        rows.append(row)
    return pd.DataFrame(rows, columns=["rule", "key", *SUMMED, *PEAK])


def in_arm(key: str, student: str) -> bool:
    for segment in key.split("/"):
        if segment == student:
            return True
        if segment.startswith(student + ".") and VARIANT_RE.match(segment[len(student) + 1 :]):
            return True
    return False


def _summary(jobs: pd.DataFrame, **labels) -> dict:
    row = {"study": "", "arm": "", "rule": "", **labels, "jobs": len(jobs)}
    for source, target in SUMMED.items():
        row[target] = float(jobs[source].sum()) if len(jobs) else 0.0
    for source, target in PEAK.items():
        row[target] = float(jobs[source].max()) if len(jobs) else 0.0
    return row


def cost_table(jobs: pd.DataFrame, studies: Mapping[str, Mapping] | None = None) -> pd.DataFrame:
    rows = []
    for rule, group in jobs.groupby("rule", sort=True):
        rows.append(_summary(group, scope="rule", rule=rule))
    for study, spec in sorted((studies or {}).items()):
        for arm in spec.get("arms", []):
            members = jobs[jobs["key"].map(lambda key, arm=arm: in_arm(key, arm))]
            rows.append(_summary(members, scope="arm", study=study, arm=arm))
            for rule, group in members.groupby("rule", sort=True):
                rows.append(_summary(group, scope="arm-rule", study=study, arm=arm, rule=rule))
    rows.append(_summary(jobs, scope="total"))
    return pd.DataFrame(rows, columns=COLUMNS)


def _markdown(table: pd.DataFrame) -> str:
    def fmt(frame: pd.DataFrame, columns: list[str]) -> str:
        shown = frame[columns].copy()
        for column in ("wall_s", "cpu_s", "max_rss_mb", "io_in_mb", "io_out_mb"):
            if column in shown:
                shown[column] = shown[column].map(lambda v: f"{v:.1f}")
        return shown.to_markdown(index=False, disable_numparse=True)

    figures = ["jobs", "wall_s", "cpu_s", "max_rss_mb"]
    parts = ["# Cost", "", "Per rule family (sum over jobs; max_rss_mb is the largest job's).", ""]
    per_rule = table[table.scope.isin(["rule", "total"])].copy()
    per_rule.loc[per_rule.scope == "total", "rule"] = "(all jobs)"
    parts += [fmt(per_rule, ["rule", *figures]), ""]
    arms = table[table.scope == "arm"]
    if len(arms):
        parts += ["Per study arm (jobs whose key names the arm's student).", ""]
        parts += [fmt(arms, ["study", "arm", *figures]), ""]
    return "\n".join(parts)


def jobs_in_manifest(manifest_path: str | os.PathLike) -> set[tuple[str, str]] | None:
    """(rule, key) of the jobs a provenance manifest lists (their records mirror the benchmark
    paths: provenance/<rule>/<key>.json); None if it lists none."""
    manifest = json.loads(Path(manifest_path).read_text(encoding="utf-8"))
    jobs = set()
    for job in manifest.get("jobs", []):
        parts = Path(job["record"]).with_suffix("").parts
        if "provenance" in parts:
            rel = parts[len(parts) - parts[::-1].index("provenance") :]
            if len(rel) >= 2:
                jobs.add((rel[0], "/".join(rel[1:])))
    return jobs or None


def write_cost_table(
    benchmark_dir: str | os.PathLike,
    tsv: str | os.PathLike,
    markdown: str | os.PathLike,
    studies: Mapping[str, Mapping] | None = None,
    only: set[tuple[str, str]] | None = None,
) -> pd.DataFrame:
    """Write the cost table; with ``only``, count just those (rule, key) jobs (the ones behind
    the current targets: benchmark files of jobs a changed configuration no longer asks for
    stay on disk, and must not be charged to it)."""
    jobs = read_benchmarks(benchmark_dir)
    if only is not None:
        keep = [(rule, key) in only for rule, key in zip(jobs["rule"], jobs["key"], strict=True)]
        jobs = jobs[keep]
    table = cost_table(jobs, studies)
    with atomic_output(tsv) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.3f")
    with atomic_output(markdown) as tmp:
        tmp.write_text(_markdown(table), encoding="utf-8")
    return table
