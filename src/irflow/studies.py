"""Study tables: arms side by side, paired significance tests over queries, per-query deltas.

A study compares students (its *arms*) on the same test queries. Every row of the table is one
evaluated run (an arm, or an arm's variant: its embeddings cut to a Matryoshka dim, or its
untrained initialisation) on one dataset. Each row except the baseline's is compared with a
*reference* row on the same queries:

* an arm (or an arm's dim variant) against the baseline arm (the same variant);
* an arm's untrained initialisation against the trained arm (so its delta is negative when
  training helped).

For every measure the table gives the mean, the delta (row − reference: the mean of the
per-query differences, which is the effect size), its 95 % confidence interval, the paired
test's two-sided p-value, the Holm-adjusted p-value over all comparisons of that measure in the
study (family-wise error at ``alpha``), a mark, and a note:

* ``▲``/``▼`` when the adjusted p-value is below ``alpha`` and the row is better/worse than its
  reference;
* the confidence interval is Student's t interval of the mean paired difference
  (``ttest_rel(...).confidence_interval(0.95)``: mean ± t(0.975, n−1) · s/√n), per comparison
  and not adjusted for multiplicity; it is given whichever test decides the p-value;
* the note says why a comparison has no p-value (then no interval and no mark either).

The paired tests (over per-query values of queries judged in the qrels):

* ``t-test``: Student's paired t-test (``scipy.stats.ttest_rel``, two-sided);
* ``randomization``: the two-sided paired randomization (sign-flip) test of the mean difference
  (``scipy.stats.permutation_test`` with ``permutation_type='samples'``; Smucker, Allan &
  Carterette, CIKM 2007, recommend it for IR). Up to 13 queries (2^13 ≤ 10,000) scipy
  enumerates all 2^n sign flips, so p is exact; beyond, it draws 10,000 flips from a seeded
  generator and counts the observed assignment, so p > 0.

Degenerate comparisons get no p-value (NaN in the TSV), no interval, no mark, and leave the Holm
family (which is the comparisons that were tested):

* one query: there is no variability to test against;
* the same values on every query (all ties): nothing to test;
* the same nonzero difference on every query (zero variance): t is infinite and the sign-flip
  distribution depends only on the number of queries (p = 2^(1−n)), so either p would say more
  than the data do.

Holm's step-down correction is written out here (a dozen lines): scipy offers only the
Benjamini–Hochberg false discovery rate, and statsmodels is not a dependency.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from irflow.io import InputError, atomic_output

PERMUTATIONS = 10_000
CONFIDENCE = 0.95
# Per-query measures live in [0, 1] with a handful of decimals: differences closer than this are
# the same difference.
TIE = 1e-12
TESTS = ("t-test", "randomization")


@dataclass(frozen=True)
class StudyRow:
    arm: str
    variant: str  # "trained", "dim<d>" or "untrained"
    dataset: str
    run: str
    per_query: str  # path of the run's per-query metric file
    reference: str | None = None  # run of the row this one is compared with (same dataset)


def variant_of(arm: str, reranker: str) -> str:
    if reranker == arm:
        return "trained"
    suffix = reranker[len(arm) + 1 :]
    return suffix


def plan_rows(
    rows: list[tuple[str, str, str, str]], per_query: list[str], baseline: str
) -> list[StudyRow]:
    """Attach references to ``(arm, reranker, dataset, run)`` rows (see the module docstring)."""
    if len(rows) != len(per_query):
        raise ValueError(f"{len(rows)} rows but {len(per_query)} per-query files")
    plain = [
        StudyRow(arm, variant_of(arm, reranker), dataset, run, path)
        for (arm, reranker, dataset, run), path in zip(rows, per_query, strict=True)
    ]
    index = {(r.arm, r.variant, r.dataset): r.run for r in plain}
    planned = []
    for row in plain:
        if row.variant == "untrained":
            reference = index.get((row.arm, "trained", row.dataset))
        elif row.arm == baseline:
            reference = None
        else:
            reference = index.get((baseline, row.variant, row.dataset))
        planned.append(StudyRow(**{**row.__dict__, "reference": reference}))
    return planned


@dataclass(frozen=True)
class PairedTest:
    """One paired comparison: p-value and 95 % interval of the mean difference, or a note."""

    delta: float  # mean of the per-query differences (row - reference)
    p: float  # two-sided; NaN when not tested
    ci_low: float
    ci_high: float
    note: str = ""  # why there is no p-value (empty when there is one)

    @property
    def tested(self) -> bool:
        return not math.isnan(self.p)


def degenerate_reason(diff: np.ndarray) -> str:
    """Why the paired differences admit no test ('' when they do; see the module docstring)."""
    if diff.size == 1:
        return "one query: no test"
    if np.all(np.abs(diff) <= TIE):
        return f"identical on all {diff.size} queries: no test"
    if np.ptp(diff) <= TIE:
        return f"the same difference ({diff[0]:+.4f}) on all {diff.size} queries: no test"
    return ""


def _mean_difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x - y, axis=axis)


def paired_test(a, b, test: str = "t-test", seed: int = 0) -> PairedTest:
    """The paired comparison of ``a - b`` (see the module docstring)."""
    if test not in TESTS:
        raise ValueError(f"unknown paired test {test!r}; allowed: 't-test', 'randomization'")
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired values need two 1-d arrays of one length ({a.shape}, {b.shape})")
    if a.size == 0:
        raise ValueError("no paired values to test")
    diff = a - b
    delta = float(diff.mean())
    reason = degenerate_reason(diff)
    if reason:
        return PairedTest(delta, math.nan, math.nan, math.nan, reason)
    from scipy.stats import permutation_test, ttest_rel

    t_result = ttest_rel(a, b)
    interval = t_result.confidence_interval(CONFIDENCE)
    if test == "t-test":
        p = float(t_result.pvalue)
    else:
        p = float(
            permutation_test(
                (a, b),
                _mean_difference,
                permutation_type="samples",
                vectorized=True,
                n_resamples=PERMUTATIONS,
                batch=1000,
                alternative="two-sided",
                rng=np.random.default_rng(seed),
            ).pvalue
        )
    return PairedTest(delta, p, float(interval.low), float(interval.high))


def paired_p_value(a, b, test: str = "t-test", seed: int = 0) -> float:
    """Two-sided p-value of the paired difference ``a - b``; NaN when not tested."""
    return paired_test(a, b, test, seed).p


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order.

    The i-th smallest of m p-values is multiplied by m - i + 1, capped at 1, and raised to the
    running maximum of the values before it (so an adjusted p-value never falls below that of
    a smaller raw p-value). NaN entries (comparisons not tested) stay NaN and do not count in m.
    """
    tested = [i for i, p in enumerate(p_values) if not math.isnan(p)]
    m = len(tested)
    order = sorted(tested, key=lambda i: p_values[i])
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def _read_per_query(path: str, measures: list[str]) -> pd.DataFrame:
    frame = pd.read_csv(path, sep="\t", dtype={"query_id": str}).set_index("query_id")
    missing = [m for m in measures if m not in frame.columns]
    if missing:
        raise InputError(
            f"{path}: no column(s) {missing} (it has {list(frame.columns)}); "
            f"set the study's 'measures:' to metric-table columns"
        )
    if frame.index.duplicated().any():
        raise InputError(
            f"{path}: duplicate query ids {list(frame.index[frame.index.duplicated()])[:5]}"
        )
    return frame[measures]


def measure_columns(measure: str) -> list[str]:
    """The study table's columns for one measure, in order."""
    return [
        measure,
        f"{measure} delta",
        f"{measure} ci_low",
        f"{measure} ci_high",
        f"{measure} p",
        f"{measure} p_holm",
        f"{measure} sig",
        f"{measure} note",
    ]


def build_study_table(
    study: str,
    rows: list[StudyRow],
    measures: list[str],
    test: str = "t-test",
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The study table (one row per evaluated run) and the long per-query delta table."""
    if test not in TESTS:
        raise ValueError(f"unknown paired test {test!r}; allowed: 't-test', 'randomization'")
    values = {row.run + "@" + row.dataset: _read_per_query(row.per_query, measures) for row in rows}
    by_run = {(row.dataset, row.run): row for row in rows}
    table = []
    deltas = []
    p_raw: dict[str, list[tuple[int, float]]] = {m: [] for m in measures}
    for i, row in enumerate(rows):
        mine = values[row.run + "@" + row.dataset]
        record = {
            "study": study,
            "dataset": row.dataset,
            "arm": row.arm,
            "variant": row.variant,
            "run": row.run,
            "reference": row.reference or "",
            "queries": len(mine),
        }
        for measure in measures:
            record[measure] = float(mine[measure].mean())
        if row.reference is not None:
            ref_row = by_run[(row.dataset, row.reference)]
            theirs = values[ref_row.run + "@" + ref_row.dataset]
            if set(mine.index) != set(theirs.index):
                only = sorted(set(mine.index) ^ set(theirs.index))[:5]
                raise InputError(
                    f"{row.per_query} and {ref_row.per_query} cover different queries "
                    f"(e.g. {only}); paired tests need the same queries"
                )
            theirs = theirs.loc[mine.index]
            for measure in measures:
                a, b = mine[measure].to_numpy(), theirs[measure].to_numpy()
                result = paired_test(a, b, test, seed)
                record[f"{measure} delta"] = result.delta
                record[f"{measure} ci_low"] = result.ci_low
                record[f"{measure} ci_high"] = result.ci_high
                record[f"{measure} p"] = result.p
                record[f"{measure} note"] = result.note
                p_raw[measure].append((i, result.p))
                for qid, va, vb in zip(mine.index, a, b, strict=True):
                    deltas.append(
                        {
                            "study": study,
                            "dataset": row.dataset,
                            "arm": row.arm,
                            "variant": row.variant,
                            "run": row.run,
                            "reference": row.reference,
                            "query_id": qid,
                            "measure": measure,
                            "value": float(va),
                            "reference_value": float(vb),
                            "delta": float(va - vb),
                        }
                    )
        else:
            for measure in measures:
                record[f"{measure} sig"] = ""
                record[f"{measure} note"] = ""
        table.append(record)
    for measure in measures:
        adjusted = holm([p for _, p in p_raw[measure]])
        for (i, _), p_adj in zip(p_raw[measure], adjusted, strict=True):
            table[i][f"{measure} p_holm"] = p_adj
            delta = table[i][f"{measure} delta"]
            significant = not math.isnan(p_adj) and p_adj < alpha and delta != 0
            table[i][f"{measure} sig"] = ("▲" if delta > 0 else "▼") if significant else ""
    columns = ["study", "dataset", "arm", "variant", "run", "reference", "queries"]
    for measure in measures:
        columns += measure_columns(measure)
    frame = pd.DataFrame(table).reindex(columns=columns)
    delta_columns = [
        "study", "dataset", "arm", "variant", "run", "reference", "query_id", "measure",
        "value", "reference_value", "delta",
    ]  # fmt: skip
    return frame, pd.DataFrame(deltas, columns=delta_columns)


SMOKE_NOTICE = "Smoke scale: these numbers show that the pipeline runs, not findings."


def markdown_table(
    frame: pd.DataFrame, measures: list[str], study: str, spec: dict, scale: str | None = None
) -> str:
    """Readable view: means with marks, deltas against the reference with their 95 % interval
    and p-value, and the notes of comparisons that were not tested. At ``scale`` smoke it
    opens by saying its numbers are no findings."""
    lines = [f"# Study {study}", ""]
    if scale == "smoke":
        lines += [f"**{SMOKE_NOTICE}**", ""]
    if spec.get("description"):
        lines += [spec["description"].strip(), ""]
    baseline = spec.get("baseline") or spec["arms"][0]
    lines += [
        f"Baseline arm: `{baseline}`. Δ = row − reference on the same queries (mean paired "
        f"difference), [95 % t interval of Δ], p = two-sided {spec.get('test', 't-test')} over "
        f"queries; ▲/▼: Holm-adjusted p < {spec.get('alpha', 0.05)} over the study's tested "
        f"comparisons of that measure. An untrained row's reference is its trained arm. "
        f"Comparisons with one query, or the same difference on every query, are not tested "
        f"(p: –, see the notes).",
        "",
    ]
    view = []
    notes = []
    for _, r in frame.iterrows():
        entry = {
            "dataset": r["dataset"],
            "arm": r["arm"],
            "variant": r["variant"],
            "reference": r["reference"].split("/")[-1] if r["reference"] else "",
        }
        for m in measures:
            cell = f"{r[m]:.4f}"
            if r["reference"]:
                cell += f" ({r[f'{m} delta']:+.4f}){r[f'{m} sig']}"
                if pd.isna(r[f"{m} p"]):
                    cell += " p: –"
                    notes.append(f"- {r['dataset']} {r['run']} {m}: {r[f'{m} note']}")
                else:
                    cell += (
                        f" [{r[f'{m} ci_low']:+.4f}, {r[f'{m} ci_high']:+.4f}] p={r[f'{m} p']:.3g}"
                    )
            entry[m] = cell
        view.append(entry)
    lines.append(pd.DataFrame(view).to_markdown(index=False))
    if notes:
        lines += ["", "Not tested:", "", *notes]
    return "\n".join(lines) + "\n"


def write_study_table(
    study: str,
    spec: dict,
    rows: list[tuple[str, str, str, str]],
    per_query: list[str],
    tsv_out: str,
    markdown_out: str,
    per_query_out: str,
    seed: int = 0,
    scale: str | None = None,
) -> pd.DataFrame:
    measures = list(spec.get("measures") or ["nDCG@10", "RR@10", "AP", "R-Prec", "P@10"])
    baseline = spec.get("baseline") or spec["arms"][0]
    planned = plan_rows(rows, per_query, baseline)
    frame, deltas = build_study_table(
        study, planned, measures, spec.get("test", "t-test"), spec.get("alpha", 0.05), seed
    )
    with atomic_output(tsv_out) as tmp:
        frame.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    with atomic_output(per_query_out) as tmp:
        deltas.to_csv(tmp, sep="\t", index=False, float_format="%.6f")
    with atomic_output(markdown_out) as tmp:
        tmp.write_text(markdown_table(frame, measures, study, spec, scale), encoding="utf-8")
    return frame
