"""Reproduction checks: the figures a configuration expects, compared with what the run measured.

The config's ``expectations:`` list names a metric row (dataset, run, measure) with an expected
value, its tolerances and where the figure comes from (a paper, Anserini/pyserini's
reproductions, or an earlier run of this workflow). Each expectation gets one *class*, in the
spirit of Anserini/pyserini's regression checks (Δ = measured − expected):

* ``exact``: |Δ| ≤ 1e-4 (:data:`EXACT`): the same figure at the metric tables' 4 decimals, up
  to one unit in the last place (rounding);
* ``ok``: |Δ| ≤ ``tolerance``;
* ``ok-ish``: |Δ| ≤ ``tolerance_okish`` (default: twice ``tolerance``): flagged, not failing
  unless the expectation says ``strict: true``;
* ``missed``: the row was measured and is outside both tolerances;
* ``missing``: no such row was measured (the run is not configured, or the measure is not in
  its metric table).

and one *status*, what the check makes of the class: ``reproduced`` (exact, ok, and ok-ish
unless strict), ``missed`` (missed, and ok-ish when strict) or ``missing``.

The table is ``<results>/tables/reproduction.{tsv,md}``; :func:`failures` lists what a
``check`` target must fail on and :func:`flagged` the ok-ish rows it lets through.
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
CLASSES = ("exact", "ok", "ok-ish", "missed", "missing")
COLUMNS = [
    "dataset",
    "run",
    "measure",
    "expected",
    "tolerance",
    "tolerance_okish",
    "measured",
    "difference",
    "class",
    "status",
    "source",
    "note",
]
# |Δ| up to one unit in the 4th decimal of the metric tables is the same figure.
EXACT = 1e-4
# The default ok-ish band, as a multiple of the ok tolerance.
OKISH_FACTOR = 2.0
# Metric tables hold 4 decimals; a difference equal to a tolerance must count as inside it,
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
    tolerance_okish: float | None = None  # None: OKISH_FACTOR x tolerance
    strict: bool = False  # ok-ish fails

    def __post_init__(self) -> None:
        if self.tolerance < 0 or (self.tolerance_okish is not None and self.tolerance_okish < 0):
            raise InputError(f"{self.describe()}: tolerances must not be negative")
        if self.tolerance_okish is not None and self.tolerance_okish < self.tolerance:
            raise InputError(
                f"{self.describe()}: tolerance_okish ({self.tolerance_okish:g}) is narrower "
                f"than tolerance ({self.tolerance:g})"
            )

    def describe(self) -> str:
        return f"{self.dataset} {self.run} {self.measure}"

    @property
    def okish(self) -> float:
        """The ok-ish tolerance (stated, or the default multiple of the ok tolerance)."""
        if self.tolerance_okish is None:
            return OKISH_FACTOR * self.tolerance
        return self.tolerance_okish

    @classmethod
    def from_config(cls, entry: Mapping, where: str = "expectations") -> Expectation:
        try:
            okish = entry.get("tolerance_okish")
            return cls(
                dataset=str(entry["dataset"]),
                run=str(entry["run"]).strip("/"),
                measure=str(entry["measure"]),
                value=float(entry["value"]),
                tolerance=float(entry.get("tolerance", 0.0)),
                source=str(entry.get("source", "")),
                note=str(entry.get("note", "")),
                tolerance_okish=None if okish is None else float(okish),
                strict=bool(entry.get("strict", False)),
            )
        except KeyError as err:
            raise InputError(f"config: {where} lacks the key {err.args[0]!r}") from None
        except InputError as err:
            raise InputError(f"config: {where}: {err}") from None

    @property
    def key(self) -> tuple[str, str]:
        return (self.dataset, self.run)

    def classify(self, measured: float) -> tuple[str, str]:
        """The (class, status) of a measured value (NaN: not measured)."""
        if math.isnan(measured):
            return "missing", "missing"
        off = abs(measured - self.value)
        if off <= EXACT + EPSILON:
            return "exact", "reproduced"
        if off <= self.tolerance + EPSILON:
            return "ok", "reproduced"
        if off <= self.okish + EPSILON:
            return "ok-ish", "missed" if self.strict else "reproduced"
        return "missed", "missed"


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
        grade, status = exp.classify(measured)
        difference = measured - exp.value
        rows.append(
            {
                "dataset": exp.dataset,
                "run": exp.run,
                "measure": exp.measure,
                "expected": exp.value,
                "tolerance": exp.tolerance,
                "tolerance_okish": exp.okish,
                "measured": measured,
                "difference": difference,
                "class": grade,
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
    for column in ("tolerance", "tolerance_okish"):
        shown[column] = shown[column].map(lambda v: f"±{v:g}")
    counts = ", ".join(f"{(table.status == s).sum()} {s}" for s in STATUSES)
    classes = ", ".join(f"{(table['class'] == c).sum()} {c}" for c in CLASSES)
    legend = (
        f"Classes: exact |Δ| ≤ {EXACT:g}; ok |Δ| ≤ tolerance; ok-ish |Δ| ≤ tolerance_okish "
        f"(flagged; it fails only where the expectation is strict); else missed; missing: "
        f"not measured."
    )
    body = (
        shown.to_markdown(index=False, disable_numparse=True)
        if len(shown)
        else "(no expectations configured)"
    )
    return f"# Reproduction checks\n\n{counts} ({classes})\n\n{legend}\n\n{body}\n"


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
    numbers = {
        c: float for c in ("expected", "tolerance", "tolerance_okish", "measured", "difference")
    }
    return pd.read_csv(
        path,
        sep="\t",
        dtype={"run": str, "dataset": str, "source": str, "note": str, "class": str, **numbers},
    ).fillna({"source": "", "note": ""})


def _class(row: Mapping) -> str:
    # Tables written before classes existed have a status only.
    grade = row.get("class")
    return grade if isinstance(grade, str) and grade else str(row["status"])


def describe(row: Mapping) -> str:
    where = f"{row['dataset']} {row['run']} {row['measure']}"
    expected = f"expected {float(row['expected']):.4f} ± {float(row['tolerance']):g}"
    okish = row.get("tolerance_okish")
    if okish is not None and not pd.isna(okish):
        expected += f" (ok-ish ± {float(okish):g})"
    if row["status"] == "missing":
        return f"{where}: {expected}, not measured"
    return f"{where}: measured {float(row['measured']):.4f}, {expected}"


def failures(table: pd.DataFrame, fail_on_missing: bool = True, strict: bool = False) -> list[str]:
    """One line per row that fails the check: missed (an ok-ish row of a strict expectation
    included), missing unless ``fail_on_missing`` is false, and every ok-ish row when
    ``strict``. Exact, ok and (unless strict) ok-ish rows pass."""
    lines = []
    for _, row in table.iterrows():
        grade = _class(row)
        if grade == "ok-ish" and (strict or row["status"] == "missed"):
            lines.append(f"OK-ISH (strict): {describe(row)}")
        elif grade == "missed" or (grade == "missing" and fail_on_missing):
            lines.append(f"{grade.upper()}: {describe(row)}")
    return lines


def flagged(table: pd.DataFrame) -> list[str]:
    """One line per ok-ish row that passes (to print as a warning beside a passing check)."""
    return [
        f"OK-ISH: {describe(row)}"
        for _, row in table.iterrows()
        if _class(row) == "ok-ish" and row["status"] != "missed"
    ]
