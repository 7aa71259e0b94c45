"""Reproduction checks: the figures a configuration expects, compared with what the run measured.

The config's ``expectations:`` list names a metric row (dataset, run, measure) with an expected
value, a tolerance and where the figure comes from (a paper, Anserini/pyserini's
reproductions, or an earlier run of this workflow). Each expectation gets one status:

* ``reproduced``: |measured - expected| <= tolerance;
* ``missed``: the row was measured and is outside the tolerance;
* ``missing``: no such row was measured (the run is not configured, or the measure is not in
  its metric table).

The table is ``<results>/tables/reproduction.{tsv,md}``; :func:`failures` lists what a
``check`` target must fail on.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from irflow.io import InputError, atomic_output

STATUSES = ("reproduced", "missed", "missing")
COLUMNS = [
    "dataset",
    "run",
    "measure",
    "expected",
    "tolerance",
    "measured",
    "difference",
    "status",
    "source",
    "note",
]
# Metric tables hold 4 decimals; a difference equal to the tolerance must count as inside it,
# whatever binary rounding does to e.g. 0.5059 - 0.5058.
EPSILON = 1e-9


@dataclass(frozen=True)
class Expectation:
    dataset: str
    run: str
    measure: str
    value: float
    tolerance: float
    source: str = ""
    note: str = ""

    @classmethod
    def from_config(cls, entry: Mapping, where: str = "expectations") -> Expectation:
        try:
            return cls(
                dataset=str(entry["dataset"]),
                run=str(entry["run"]).strip("/"),
                measure=str(entry["measure"]),
                value=float(entry["value"]),
                tolerance=float(entry.get("tolerance", 0.0)),
                source=str(entry.get("source", "")),
                note=str(entry.get("note", "")),
            )
        except KeyError as err:
            raise InputError(f"config: {where} lacks the key {err.args[0]!r}") from None

    @property
    def key(self) -> tuple[str, str]:
        return (self.dataset, self.run)


def metric_file(results_dir: str | os.PathLike, dataset: str, run: str) -> str:
    return f"{results_dir}/metrics/{dataset}/{run}/mean.tsv"


def read_mean_row(path: str | os.PathLike) -> dict[str, float]:
    """The measure columns of a one-row ``mean.tsv`` (see irflow.evaluate.write_metrics)."""
    path = Path(path)
    try:
        table = pd.read_csv(path, sep="\t", dtype={"run": str, "dataset": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise InputError(f"{path}: cannot read the metric table ({err})") from None
    if len(table) != 1:
        raise InputError(f"{path}: expected one row of mean metrics, found {len(table)}")
    row = table.iloc[0]
    values = {}
    for column in table.columns:
        if column in ("dataset", "run"):
            continue
        try:
            values[column] = float(row[column])
        except (TypeError, ValueError):
            continue
    return values


def evaluate(
    expectations: Iterable[Expectation], metric_files: Mapping[tuple[str, str], str | os.PathLike]
) -> pd.DataFrame:
    """One row per expectation with its measured value and status (see the module docstring)."""
    rows = []
    cache: dict[str, dict[str, float]] = {}
    for exp in expectations:
        measured = math.nan
        path = metric_files.get(exp.key)
        if path is not None and Path(path).is_file():
            values = cache.setdefault(str(path), read_mean_row(path))
            measured = values.get(exp.measure, math.nan)
        if math.isnan(measured):
            status, difference = "missing", math.nan
        else:
            difference = measured - exp.value
            status = "reproduced" if abs(difference) <= exp.tolerance + EPSILON else "missed"
        rows.append(
            {
                "dataset": exp.dataset,
                "run": exp.run,
                "measure": exp.measure,
                "expected": exp.value,
                "tolerance": exp.tolerance,
                "measured": measured,
                "difference": difference,
                "status": status,
                "source": exp.source,
                "note": exp.note,
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def _markdown(table: pd.DataFrame) -> str:
    shown = table.copy()
    for column in ("expected", "measured", "difference"):
        shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{v:.4f}")
    shown["tolerance"] = shown["tolerance"].map(lambda v: f"±{v:g}")
    counts = ", ".join(f"{(table.status == s).sum()} {s}" for s in STATUSES)
    body = (
        shown.to_markdown(index=False, disable_numparse=True)
        if len(shown)
        else "(no expectations configured)"
    )
    return f"# Reproduction checks\n\n{counts}\n\n{body}\n"


def write_reproduction_table(
    expectations: Iterable[Expectation],
    metric_files: Mapping[tuple[str, str], str | os.PathLike],
    tsv: str | os.PathLike,
    markdown: str | os.PathLike,
) -> pd.DataFrame:
    table = evaluate(expectations, metric_files)
    with atomic_output(tsv) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.6g", na_rep="")
    with atomic_output(markdown) as tmp:
        tmp.write_text(_markdown(table), encoding="utf-8")
    return table


def read_reproduction_table(path: str | os.PathLike) -> pd.DataFrame:
    numbers = {c: float for c in ("expected", "tolerance", "measured", "difference")}
    return pd.read_csv(
        path,
        sep="\t",
        dtype={"run": str, "dataset": str, "source": str, "note": str, **numbers},
    ).fillna({"source": "", "note": ""})


def describe(row: Mapping) -> str:
    where = f"{row['dataset']} {row['run']} {row['measure']}"
    expected = f"expected {float(row['expected']):.4f} ± {float(row['tolerance']):g}"
    if row["status"] == "missing":
        return f"{where}: {expected}, not measured"
    return f"{where}: measured {float(row['measured']):.4f}, {expected}"


def failures(table: pd.DataFrame, fail_on_missing: bool = True) -> list[str]:
    """One line per row that fails the check (missed, and missing unless told otherwise)."""
    failing = {"missed", "missing"} if fail_on_missing else {"missed"}
    return [
        f"{row['status'].upper()}: {describe(row)}"
        for _, row in table.iterrows()
        if row["status"] in failing
    ]
