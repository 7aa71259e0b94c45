"""A study table in the form a paper prints it: arms as rows, the study's measures as columns.

Built from the study table TSV (:func:`irflow.studies.build_study_table`: per measure the mean,
``delta``, ``p``, ``p_holm`` and ``sig`` columns) and, for the queries each row improves,
degrades or ties, from the long per-query delta table beside it. Both the HTML report
(:mod:`irflow.report.html`) and the LaTeX table (:mod:`irflow.report.latex`) read this view,
so the two print the same rows, the same bold cells and the same marks.

* Rows are grouped by dataset, then by variant (trained arms, then each Matryoshka dim from the
  largest, then the untrained initialisations), arms in the study's order within a group.
* The best mean of a measure within a (dataset, variant) group is marked (every measure of a
  study table is higher-is-better: nDCG, RR, AP, R-Prec, P@k, recall), ties all marked, and
  only where the group has more than one row.
* A row pooling seed replicates shows its mean over the seeds with the standard deviation over
  them (``<measure> sd``).
* A row is significantly better or worse than its reference (the baseline arm; an untrained
  row's trained arm) when the table says so: its ``sig`` column (▲/▼, Holm-adjusted p below the
  study's alpha), or, where a table has no ``sig`` column, its ``p_holm`` against ``alpha``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import pandas as pd

DEFAULT_MEASURES = ("nDCG@10", "RR@10", "AP", "R-Prec", "P@10")
SUFFIXES = (" delta", " p", " p_holm", " sig")
TIE = 1e-9  # |Δ| at or below this is a tie (deltas are written with 6 decimals)


@dataclass
class Cell:
    mean: float
    sd: float | None = None  # standard deviation over seed replicates (None: one seed)
    delta: float | None = None  # row − reference, None for a row without one
    p_holm: float | None = None
    sig: str = ""  # "better", "worse" or ""
    best: bool = False


@dataclass
class Row:
    dataset: str
    arm: str
    variant: str
    run: str
    reference: str  # "" for the baseline's rows
    queries: int | None
    seeds: int = 1  # seed replicates pooled in this row
    cells: dict[str, Cell] = field(default_factory=dict)
    counts: tuple[int, int, int] | None = None  # improved, degraded, tied (primary measure)
    first_of_variant: bool = False

    @property
    def label(self) -> str:
        return self.arm if self.variant in ("", "trained") else f"{self.arm} ({self.variant})"

    @property
    def reference_arm(self) -> str:
        return self.reference.split("/")[-1] if self.reference else ""


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def measures_of(frame: pd.DataFrame, spec: dict) -> list[str]:
    """The study's measures: the spec's, else every column that has a ``<m> delta`` beside it."""
    configured = [m for m in spec.get("measures") or [] if m in frame.columns]
    if configured:
        return configured
    found = [c for c in frame.columns if f"{c} delta" in frame.columns]
    return found or [m for m in DEFAULT_MEASURES if m in frame.columns]


def variant_rank(variant: str) -> tuple[int, float]:
    if variant in ("", "trained"):
        return (0, 0.0)
    dim = re.fullmatch(r"dim(\d+)", variant)
    if dim:
        return (1, -float(dim.group(1)))
    if variant == "untrained":
        return (2, 0.0)
    return (3, 0.0)


def _significance(record: pd.Series, measure: str, alpha: float) -> str:
    mark = record.get(f"{measure} sig")
    if isinstance(mark, str) and mark.strip():
        return {"▲": "better", "▼": "worse"}.get(mark.strip(), "")
    if f"{measure} sig" in record.index:
        return ""
    p_holm = _number(record.get(f"{measure} p_holm"))
    delta = _number(record.get(f"{measure} delta"))
    if p_holm is None or delta is None or p_holm >= alpha or abs(delta) <= TIE:
        return ""
    return "better" if delta > 0 else "worse"


def query_counts(deltas: pd.DataFrame | None, measure: str) -> dict[tuple[str, str], tuple]:
    """(dataset, run) -> (improved, degraded, tied) queries of ``measure`` against the row's
    reference, from the long per-query delta table."""
    if deltas is None or not len(deltas) or not {"measure", "delta"} <= set(deltas.columns):
        return {}
    chosen = deltas[deltas["measure"] == measure]
    out = {}
    for (dataset, run), group in chosen.groupby(["dataset", "run"], sort=False):
        values = pd.to_numeric(group["delta"], errors="coerce").dropna()
        improved, degraded = int((values > TIE).sum()), int((values < -TIE).sum())
        out[(str(dataset), str(run))] = (improved, degraded, len(values) - improved - degraded)
    return out


def compact_rows(
    frame: pd.DataFrame, spec: dict, deltas: pd.DataFrame | None = None
) -> tuple[list[str], list[Row]]:
    """The study's measures and its rows in print order (see the module docstring)."""
    measures = measures_of(frame, spec)
    alpha = float(spec.get("alpha", 0.05))
    arms = list(spec.get("arms") or [])
    counts = query_counts(deltas, measures[0]) if measures else {}
    datasets = list(dict.fromkeys(frame["dataset"].astype(str))) if "dataset" in frame else [""]
    rows = []
    for _, record in frame.iterrows():
        arm = str(record.get("arm", ""))
        reference = record.get("reference")
        row = Row(
            dataset=str(record.get("dataset", "")),
            arm=arm,
            variant=str(record.get("variant", "trained") or "trained"),
            run=str(record.get("run", "")),
            reference=reference if isinstance(reference, str) else "",
            queries=int(q) if (q := _number(record.get("queries"))) is not None else None,
            seeds=int(_number(record.get("seeds")) or 1),
        )
        for measure in measures:
            row.cells[measure] = Cell(
                mean=_number(record[measure]),
                sd=_number(record.get(f"{measure} sd")),
                delta=_number(record.get(f"{measure} delta")) if row.reference else None,
                p_holm=_number(record.get(f"{measure} p_holm")) if row.reference else None,
                sig=_significance(record, measure, alpha) if row.reference else "",
            )
        row.counts = counts.get((row.dataset, row.run)) if row.reference else None
        rows.append(row)

    def order(row: Row):
        arm_rank = arms.index(row.arm) if row.arm in arms else len(arms)
        return (datasets.index(row.dataset), variant_rank(row.variant), arm_rank)

    rows.sort(key=order)
    previous = None
    for row in rows:
        key = (row.dataset, row.variant)
        row.first_of_variant = key != previous and previous is not None and previous[0] == key[0]
        previous = key
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.dataset, row.variant), []).append(row)
    for members in groups.values():
        if len(members) < 2:
            continue
        for measure in measures:
            values = [r.cells[measure].mean for r in members if r.cells[measure].mean is not None]
            if not values:
                continue
            top = max(values)
            for r in members:
                mean = r.cells[measure].mean
                r.cells[measure].best = mean is not None and abs(mean - top) <= TIE
    return measures, rows


def describe_test(spec: dict) -> str:
    return {
        "t-test": "a two-sided paired t-test",
        "randomization": "a two-sided paired randomization test (10,000 sign flips)",
    }.get(spec.get("test", "t-test"), f"a paired {spec.get('test')} test")
