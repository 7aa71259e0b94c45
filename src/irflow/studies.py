"""Study tables: arms side by side, paired significance tests over queries, per-query deltas.

A study compares students (its *arms*) on the same test queries. Every row of the table is one
evaluated run (an arm, or an arm's variant: its embeddings cut to a Matryoshka dim, or its
untrained initialisation) on one dataset. Each row except the baseline's is compared with a
*reference* row on the same queries:

* an arm (or an arm's dim variant) against the baseline arm (the same variant);
* an arm's untrained initialisation against the trained arm (so its delta is negative when
  training helped).

For every measure the table gives the mean, the delta (row − reference), the paired test's
p-value and the Holm-adjusted p-value over all comparisons of that measure in the study
(family-wise error at ``alpha``), and a mark: ``▲``/``▼`` when the adjusted p-value is below
``alpha`` and the row is better/worse than its reference.

The paired tests (over per-query values of queries judged in the qrels):

* ``t-test``: Student's paired t-test (``scipy.stats.ttest_rel``, two-sided);
* ``randomization``: a two-sided paired randomization (sign-flip) test with 10,000 permutations
  drawn from a seeded generator (Smucker, Allan & Carterette, CIKM 2007, recommend it for IR).

Holm's step-down correction is written out here (a dozen lines): scipy offers only the
Benjamini–Hochberg false discovery rate, and statsmodels is not a dependency.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from irflow.io import InputError, atomic_output

PERMUTATIONS = 10_000


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


def paired_p_value(a: np.ndarray, b: np.ndarray, test: str, seed: int = 0) -> float:
    """Two-sided p-value of the paired difference ``a - b`` (see the module docstring)."""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if diff.size == 0:
        raise ValueError("no paired values to test")
    if np.allclose(diff, 0.0, atol=1e-12):
        return 1.0
    if test == "t-test":
        from scipy.stats import ttest_rel

        if np.ptp(diff) < 1e-12:
            # The same nonzero difference on every query: t is infinite (scipy warns and may
            # lose precision on the zero variance).
            return 0.0

        p = float(ttest_rel(a, b).pvalue)
        return 1.0 if np.isnan(p) else p
    if test == "randomization":
        rng = np.random.default_rng(seed)
        observed = abs(diff.mean())
        signs = rng.choice(np.array([-1.0, 1.0]), size=(PERMUTATIONS, diff.size))
        permuted = np.abs((signs * diff).mean(axis=1))
        # Counting the observed assignment keeps p > 0 (an exact test's p is never 0).
        return float((np.sum(permuted >= observed - 1e-12) + 1) / (PERMUTATIONS + 1))
    raise ValueError(f"unknown paired test {test!r}; allowed: 't-test', 'randomization'")


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (monotone, capped at 1), in the input order."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
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


def build_study_table(
    study: str,
    rows: list[StudyRow],
    measures: list[str],
    test: str = "t-test",
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The study table (one row per evaluated run) and the long per-query delta table."""
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
                record[f"{measure} delta"] = float(a.mean() - b.mean())
                p = paired_p_value(a, b, test, seed)
                record[f"{measure} p"] = p
                p_raw[measure].append((i, p))
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
        table.append(record)
    for measure in measures:
        adjusted = holm([p for _, p in p_raw[measure]])
        for (i, _), p_adj in zip(p_raw[measure], adjusted, strict=True):
            table[i][f"{measure} p_holm"] = p_adj
            delta = table[i][f"{measure} delta"]
            table[i][f"{measure} sig"] = (
                ("▲" if delta > 0 else "▼") if p_adj < alpha and delta != 0 else ""
            )
    columns = ["study", "dataset", "arm", "variant", "run", "reference", "queries"]
    for measure in measures:
        columns += [
            measure,
            f"{measure} delta",
            f"{measure} p",
            f"{measure} p_holm",
            f"{measure} sig",
        ]
    frame = pd.DataFrame(table).reindex(columns=columns)
    delta_columns = [
        "study", "dataset", "arm", "variant", "run", "reference", "query_id", "measure",
        "value", "reference_value", "delta",
    ]  # fmt: skip
    return frame, pd.DataFrame(deltas, columns=delta_columns)


def markdown_table(frame: pd.DataFrame, measures: list[str], study: str, spec: dict) -> str:
    """Readable view: means with marks, deltas against the reference in parentheses."""
    lines = [f"# Study {study}", ""]
    if spec.get("description"):
        lines += [spec["description"].strip(), ""]
    baseline = spec.get("baseline") or spec["arms"][0]
    lines += [
        f"Baseline arm: `{baseline}`. Δ = row − reference on the same queries; "
        f"▲/▼: {spec.get('test', 't-test')} over queries, Holm-adjusted p < "
        f"{spec.get('alpha', 0.05)} over the study's comparisons of that measure. An untrained "
        f"row's reference is its trained arm.",
        "",
    ]
    view = []
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
            entry[m] = cell
        view.append(entry)
    lines.append(pd.DataFrame(view).to_markdown(index=False))
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
        tmp.write_text(markdown_table(frame, measures, study, spec), encoding="utf-8")
    return frame
