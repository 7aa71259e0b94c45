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

Seed replicates (an arm trained once per seed, ``seeds:`` in the config) make one row per
(arm, variant, dataset): its run is written ``<run of seed k with k = {1,2,3}>`` (e.g.
``first-stage/emb.seed{1,2,3}``), each measure's value is the mean over seeds of the per-seed
means, ``<measure> sd`` is their sample standard deviation (ddof 1; NaN for one seed), and
``<study>.seeds.tsv`` lists every seed's means. Where either side of a comparison has more than
one seed, the p-value and interval come from a **two-level paired bootstrap**
(:func:`two_level_bootstrap`): each of 10,000 seeded resamples draws, for every arm
independently, its seeds with replacement, and one set of queries with replacement shared by
both arms (the pairing); the statistic is the mean over the drawn queries of the difference of
per-query means over the drawn seeds. Why not a paired test over per-query means across seeds:
a seed's effect is shared by every query of that model (a lucky initialisation or data order
lifts them all), so with many queries such a test reads the between-seed spread of the arms'
means as a real difference and grows overconfident as queries are added; drawing seeds puts
that spread in the resampling distribution. The interval is the percentile interval; the
two-sided p-value is the share of resampled differences at least as far from the observed one
as the observed one is from 0 (the distribution shifted to the null), counting the observed
one, so p > 0. With 3 seeds the seed draw has only 10 distinct outcomes per arm and, like every
bootstrap over few units, understates the between-seed variance by a factor (s − 1)/s: read p
near alpha with that in mind, and prefer 5 or more seeds for claims.

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
    reference: str | None = None  # run (label) of the row this one is compared with
    seed: int | None = None  # the replicate's seed; None for an arm trained once


def variant_of(arm: str, reranker: str) -> str:
    if reranker == arm:
        return "trained"
    suffix = reranker[len(arm) + 1 :]
    return suffix


def plan_rows(rows: list[tuple], per_query: list[str], baseline: str) -> list[StudyRow]:
    """Attach references to ``(arm, name, dataset, run[, seed])`` rows (see the module
    docstring); a reference is the label (:func:`group_label`) of the reference's rows."""
    if len(rows) != len(per_query):
        raise ValueError(f"{len(rows)} rows but {len(per_query)} per-query files")
    plain = []
    for row, path in zip(rows, per_query, strict=True):
        arm, name, dataset, run = row[:4]
        seed = row[4] if len(row) > 4 else None
        stem = arm if seed is None else f"{arm}.seed{seed}"
        plain.append(StudyRow(arm, variant_of(stem, name), dataset, run, path, seed=seed))
    labels = {key: group_label(members) for key, members in group_rows(plain).items()}
    planned = []
    for row in plain:
        if row.variant == "untrained":
            reference = labels.get((row.arm, "trained", row.dataset))
        elif row.arm == baseline:
            reference = None
        else:
            reference = labels.get((baseline, row.variant, row.dataset))
        planned.append(StudyRow(**{**row.__dict__, "reference": reference}))
    return planned


def group_rows(rows: list[StudyRow]) -> dict[tuple[str, str, str], list[StudyRow]]:
    """(arm, variant, dataset) -> its rows (one per seed replicate), in table order."""
    groups: dict[tuple[str, str, str], list[StudyRow]] = {}
    for row in rows:
        groups.setdefault((row.arm, row.variant, row.dataset), []).append(row)
    return groups


def group_label(members: list[StudyRow]) -> str:
    """The run of a row trained once; for seed replicates the runs in brace form,
    ``first-stage/emb.seed{1,2,3}``."""
    first = members[0]
    if len(members) == 1 and first.seed is None:
        return first.run
    stem = f"{first.arm}.seed{first.seed}"
    seeds = ",".join(str(m.seed) for m in members)
    return first.run.replace(stem, f"{first.arm}.seed{{{seeds}}}", 1)


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


def two_level_bootstrap(
    a, b, seed: int = 0, resamples: int = PERMUTATIONS, confidence: float = CONFIDENCE
) -> PairedTest:
    """The comparison of two arms trained on several seeds: ``a`` and ``b`` are (queries ×
    seeds) arrays of per-query values on the same queries (rows paired), any seed counts (see
    the module docstring for the resampling and why)."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"two-level bootstrap needs (queries, seeds) arrays: {a.shape}, {b.shape}")
    if a.size == 0 or b.size == 0:
        raise ValueError("no values to test")
    diff = a.mean(axis=1) - b.mean(axis=1)
    delta = float(diff.mean())
    no_seed_spread = np.ptp(a, axis=1).max() <= TIE and np.ptp(b, axis=1).max() <= TIE
    reason = degenerate_reason(diff) if no_seed_spread or diff.size == 1 else ""
    if reason:
        return PairedTest(delta, math.nan, math.nan, math.nan, reason)
    rng = np.random.default_rng(seed)
    queries, seeds_a, seeds_b = a.shape[0], a.shape[1], b.shape[1]
    stats = np.empty(resamples)
    chunk = max(1, 4_000_000 // (queries * max(seeds_a, seeds_b)))
    for start in range(0, resamples, chunk):
        k = min(chunk, resamples - start)
        mean_a = a[:, rng.integers(0, seeds_a, size=(k, seeds_a))].mean(axis=2)  # (queries, k)
        mean_b = b[:, rng.integers(0, seeds_b, size=(k, seeds_b))].mean(axis=2)
        drawn = rng.integers(0, queries, size=(k, queries))
        stats[start : start + k] = np.take_along_axis((mean_a - mean_b).T, drawn, axis=1).mean(1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(stats, [tail, 100 - tail])
    extreme = np.abs(stats - delta) >= abs(delta) - TIE
    p = (1 + int(extreme.sum())) / (resamples + 1)
    return PairedTest(delta, min(1.0, p), float(low), float(high))


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
        f"{measure} sd",
        f"{measure} delta",
        f"{measure} ci_low",
        f"{measure} ci_high",
        f"{measure} p",
        f"{measure} p_holm",
        f"{measure} sig",
        f"{measure} note",
    ]


TABLE_COLUMNS = [
    "study", "dataset", "arm", "variant", "run", "reference", "seeds", "queries", "test",
]  # fmt: skip


def _group_values(members: list[StudyRow], values: dict, measure: str) -> np.ndarray:
    """(queries × seeds) per-query values of one table row, queries in the first seed's order."""
    frames = [values[m.run + "@" + m.dataset] for m in members]
    index = frames[0].index
    for member, frame in zip(members[1:], frames[1:], strict=True):
        if set(frame.index) != set(index):
            only = sorted(set(frame.index) ^ set(index))[:5]
            raise InputError(
                f"{member.per_query} and {members[0].per_query} (seed replicates) cover "
                f"different queries (e.g. {only})"
            )
    return np.column_stack([f.loc[index, measure].to_numpy() for f in frames])


def build_study_table(
    study: str,
    rows: list[StudyRow],
    measures: list[str],
    test: str = "t-test",
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The study table (one row per arm, variant and dataset; seed replicates pooled), the
    long per-query delta table, and every seed replicate's means."""
    if test not in TESTS:
        raise ValueError(f"unknown paired test {test!r}; allowed: 't-test', 'randomization'")
    values = {row.run + "@" + row.dataset: _read_per_query(row.per_query, measures) for row in rows}
    groups = group_rows(rows)
    labels = {key: group_label(members) for key, members in groups.items()}
    by_label = {(key[2], label): key for key, label in labels.items()}
    table = []
    deltas = []
    replicates = []
    p_raw: dict[str, list[tuple[int, float]]] = {m: [] for m in measures}
    for i, (key, members) in enumerate(groups.items()):
        arm, variant, dataset = key
        first = members[0]
        mine_index = values[first.run + "@" + dataset].index
        replicated = first.seed is not None
        record = {
            "study": study,
            "dataset": dataset,
            "arm": arm,
            "variant": variant,
            "run": labels[key],
            "reference": first.reference or "",
            "seeds": len(members),
            "queries": len(mine_index),
        }
        mine = {m: _group_values(members, values, m) for m in measures}
        for member in members:
            per_seed = {"dataset": dataset, "arm": arm, "variant": variant}
            per_seed |= {"seed": member.seed, "run": member.run}
            frame = values[member.run + "@" + dataset]
            replicates.append(per_seed | {m: float(frame[m].mean()) for m in measures})
        for measure in measures:
            per_seed_means = mine[measure].mean(axis=0)
            record[measure] = float(per_seed_means.mean())
            record[f"{measure} sd"] = (
                float(np.std(per_seed_means, ddof=1)) if len(members) > 1 else math.nan
            )
        if first.reference is not None:
            ref_key = by_label[(dataset, first.reference)]
            ref_members = groups[ref_key]
            theirs_index = values[ref_members[0].run + "@" + dataset].index
            if set(mine_index) != set(theirs_index):
                only = sorted(set(mine_index) ^ set(theirs_index))[:5]
                raise InputError(
                    f"{first.per_query} and {ref_members[0].per_query} cover different "
                    f"queries (e.g. {only}); paired tests need the same queries"
                )
            order = [list(theirs_index).index(q) for q in mine_index]
            pooled = replicated or ref_members[0].seed is not None
            record["test"] = "two-level bootstrap" if pooled else test
            for measure in measures:
                a = mine[measure]
                b = _group_values(ref_members, values, measure)[order]
                if pooled:
                    result = two_level_bootstrap(a, b, seed)
                else:
                    result = paired_test(a[:, 0], b[:, 0], test, seed)
                record[f"{measure} delta"] = result.delta
                record[f"{measure} ci_low"] = result.ci_low
                record[f"{measure} ci_high"] = result.ci_high
                record[f"{measure} p"] = result.p
                record[f"{measure} note"] = result.note
                p_raw[measure].append((i, result.p))
                va_all, vb_all = a.mean(axis=1), b.mean(axis=1)
                for qid, va, vb in zip(mine_index, va_all, vb_all, strict=True):
                    deltas.append(
                        {
                            "study": study,
                            "dataset": dataset,
                            "arm": arm,
                            "variant": variant,
                            "run": labels[key],
                            "reference": first.reference,
                            "query_id": qid,
                            "measure": measure,
                            "value": float(va),
                            "reference_value": float(vb),
                            "delta": float(va - vb),
                        }
                    )
        else:
            record["test"] = ""
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
    columns = list(TABLE_COLUMNS)
    for measure in measures:
        columns += measure_columns(measure)
    frame = pd.DataFrame(table).reindex(columns=columns)
    delta_columns = [
        "study", "dataset", "arm", "variant", "run", "reference", "query_id", "measure",
        "value", "reference_value", "delta",
    ]  # fmt: skip
    replicate_frame = pd.DataFrame(
        [r for r in replicates if r["seed"] is not None],
        columns=["dataset", "arm", "variant", "seed", "run", *measures],
    )
    return frame, pd.DataFrame(deltas, columns=delta_columns), replicate_frame


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
    if (frame["seeds"] > 1).any():
        lines += [
            "Arms trained on several seeds: mean ± standard deviation over the seeds (n seeds "
            "in the seeds column); their comparisons use a two-level paired bootstrap over "
            "queries and seeds (interval: its 95 % percentile interval; test column).",
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
            "seeds": int(r["seeds"]),
        }
        for m in measures:
            cell = f"{r[m]:.4f}"
            if not pd.isna(r[f"{m} sd"]):
                cell += f" ± {r[f'{m} sd']:.4f}"
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
    rows: list[tuple],
    per_query: list[str],
    tsv_out: str,
    markdown_out: str,
    per_query_out: str,
    seed: int = 0,
    scale: str | None = None,
    seeds_out: str | None = None,
) -> pd.DataFrame:
    """Write the study table (TSV and Markdown), its per-query deltas and (``seeds_out``) every
    seed replicate's means; ``rows`` are ``(arm, name, dataset, run[, seed])``."""
    measures = list(spec.get("measures") or ["nDCG@10", "RR@10", "AP", "R-Prec", "P@10"])
    baseline = spec.get("baseline") or spec["arms"][0]
    planned = plan_rows(rows, per_query, baseline)
    frame, deltas, replicates = build_study_table(
        study, planned, measures, spec.get("test", "t-test"), spec.get("alpha", 0.05), seed
    )
    if seeds_out is not None:
        with atomic_output(seeds_out) as tmp:
            replicates.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    with atomic_output(tsv_out) as tmp:
        frame.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    with atomic_output(per_query_out) as tmp:
        deltas.to_csv(tmp, sep="\t", index=False, float_format="%.6f")
    with atomic_output(markdown_out) as tmp:
        tmp.write_text(markdown_table(frame, measures, study, spec, scale), encoding="utf-8")
    return frame
