"""Rerun versus reference: how closely this workflow's run files reproduce another set of them.

The reference is another machine's ``results/runs/`` (or published run files in the same
layout, ``<dataset>/<run>.trec``). The measures are those of Breuer et al., "How to Measure
the Reproducibility of System-oriented IR Experiments" (SIGIR 2020), as implemented by their
library ``repro_eval`` (``repro_eval.measure``), which this module calls rather than re-writes:

* ranking agreement per topic: **Kendall's τ union** (KTU: τ between the two rankings over the
  union of their documents) and **rank-biased overlap** (RBO, p = 0.95, to the depth of the
  longer ranking, so two equal rankings give exactly 1); both 1 for equal rankings;
* effectiveness agreement: the **RMSE** of the per-topic scores of each measure (0 when the
  runs score alike on every topic), next to the two means and their difference;
* for a baseline/advanced pair of runs (a first stage and its reranker, a study's baseline arm
  and another arm), the **effect ratio** ER = mean per-topic improvement of the rerun's pair ÷
  the reference's (1: the same improvement) and the **delta relative improvement**
  ΔRI = RI(reference) − RI(rerun), RI = (mean(advanced) − mean(baseline)) / mean(baseline)
  (0: the same relative improvement).

Per-topic scores come from :func:`irflow.evaluate.evaluate_run` for both sides, with the
dataset's qrels and relevance level, so the two are scored by the same code, over every judged
topic (a judged topic missing from a run scores 0, as with trec_eval -c). Ranking agreement is
over the topics both runs rank; those in only one are counted.

Each run gets a status: ``reproduced`` (the same ranking on every topic: KTU = RBO = 1),
``within tolerance`` (rankings differ, every measure's mean within ``tolerance``), ``differs``,
or ``missing`` (no such run in the reference).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from irflow.io import InputError, atomic_output, ranked, read_run_dict

log = logging.getLogger(__name__)

RBO_P = 0.95
DEFAULT_TOLERANCE = 0.01
STATUSES = ("reproduced", "within tolerance", "differs", "missing")
SAME = 1e-12


@dataclass(frozen=True)
class RunPair:
    """One run of this workflow and the reference file it is compared with."""

    dataset: str
    run: str  # path below the dataset, e.g. rerank/bm25/minilm
    ours: str  # this workflow's run file
    reference: str  # the reference's run file (may not exist)
    qrels: str
    rel_level: int = 1


def reference_runs_folder(folder: str | os.PathLike) -> Path:
    """The folder holding ``<dataset>/<run>.trec``: ``folder/runs`` for a results folder, else
    ``folder`` itself."""
    root = Path(folder)
    return root / "runs" if (root / "runs").is_dir() else root


def _ordered(run: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Topics sorted, documents in trec_eval order (score, then doc id, descending): the order
    repro_eval's measures read rankings in."""
    return {qid: dict(ranked(dict(run[qid]))) for qid in sorted(run)}


def ranking_agreement(
    ours: Mapping[str, Mapping[str, float]], reference: Mapping[str, Mapping[str, float]]
) -> pd.DataFrame:
    """Per common topic: KTU and RBO of our ranking against the reference's."""
    from repro_eval.measure.document_order import KTU, RBO

    a, b = _ordered(reference), _ordered(ours)
    rows = []
    for qid in sorted(set(a) & set(b)):
        depth = max(len(a[qid]), len(b[qid]))
        if list(a[qid]) == list(b[qid]):
            # Equal rankings agree fully, also those of one document (where τ is undefined).
            ktu, rbo = 1.0, 1.0
        else:
            one_a, one_b = {qid: a[qid]}, {qid: b[qid]}
            ktu = KTU(one_a, one_b, trim_thresh=depth, per_topic=True)[qid]
            rbo = RBO(one_a, one_b, p=RBO_P, depth=depth, pbar=False, per_topic=True)[qid]
        rows.append({"query_id": qid, "ktu": float(ktu), "rbo": float(rbo)})
    return pd.DataFrame(rows, columns=["query_id", "ktu", "rbo"])


def _scores(per_query: pd.DataFrame, measures: list[str]) -> dict[str, dict[str, float]]:
    frame = per_query.set_index("query_id")[measures]
    return {str(q): {m: float(v) for m, v in row.items()} for q, row in frame.iterrows()}


def effectiveness_agreement(
    ours: pd.DataFrame, reference: pd.DataFrame, measures: list[str]
) -> dict[str, float]:
    """RMSE of the per-topic scores of each measure over the common topics (repro_eval)."""
    from repro_eval.measure.effectiveness import RMSE

    common = sorted(set(ours["query_id"]) & set(reference["query_id"]))
    if not common:
        return {m: math.nan for m in measures}
    mine = _scores(ours[ours["query_id"].isin(common)], measures)
    theirs = _scores(reference[reference["query_id"].isin(common)], measures)
    theirs = {q: theirs[q] for q in common}
    mine = {q: mine[q] for q in common}
    return {m: float(v) for m, v in RMSE(theirs, mine).items()}


def effect_agreement(
    ours_baseline: pd.DataFrame,
    ours_advanced: pd.DataFrame,
    reference_baseline: pd.DataFrame,
    reference_advanced: pd.DataFrame,
    measures: list[str],
) -> dict[str, dict[str, float]]:
    """ER and ΔRI of one baseline/advanced pair per measure (repro_eval), over the topics all
    four runs share."""
    from repro_eval.measure.overall_effects import DRI, ER

    frames = [ours_baseline, ours_advanced, reference_baseline, reference_advanced]
    common = sorted(set.intersection(*(set(f["query_id"]) for f in frames)))
    if not common:
        return {m: {"ER": math.nan, "dRI": math.nan} for m in measures}
    b, a, rb, ra = (
        {q: s[q] for q in common}
        for s in (_scores(f[f["query_id"].isin(common)], measures) for f in frames)
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        er = ER(orig_score_a=ra, orig_score_b=rb, rep_score_a=a, rep_score_b=b)
        dri = DRI(orig_score_a=ra, orig_score_b=rb, rep_score_a=a, rep_score_b=b)
    return {m: {"ER": float(er[m]), "dRI": float(dri[m])} for m in measures}


def _per_query(run: dict, pair: RunPair, qrels: dict, measures: dict | None, which: str):
    from irflow.evaluate import evaluate_run

    judged = {q: docs for q, docs in run.items() if q in qrels}
    _, per_query = evaluate_run(
        judged, qrels, rel=pair.rel_level, measures=measures, unjudged="report",
        run_name=f"{which} {pair.dataset}/{pair.run}",
    )  # fmt: skip
    return per_query.reset_index()


def status_of(ranking: pd.DataFrame, deltas: Mapping[str, float], tolerance: float) -> str:
    if len(ranking) and (ranking[["ktu", "rbo"]] >= 1 - SAME).all().all():
        return "reproduced"
    if all(abs(d) <= tolerance + SAME for d in deltas.values() if not math.isnan(d)):
        return "within tolerance"
    return "differs"


def compare_runs(
    pairs: list[RunPair],
    measures: list[str],
    baseline_pairs: list[tuple[str, str, str]] = (),
    tolerance: float = DEFAULT_TOLERANCE,
    measure_columns: dict[str, str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(one row per run, one row per run and topic, one row per baseline/advanced pair).

    ``baseline_pairs`` are ``(dataset, baseline run, advanced run)``; ``measure_columns`` the
    metric definitions (irflow.evaluate's name → ir-measures spec; default its measures)."""
    from irflow.io import read_qrels

    qrels_cache: dict[str, dict] = {}
    scored: dict[tuple[str, str], tuple[pd.DataFrame, pd.DataFrame] | None] = {}
    rows, topics = [], []
    for pair in pairs:
        record = {"dataset": pair.dataset, "run": pair.run}
        if not Path(pair.reference).is_file():
            rows.append({**record, "status": "missing", "note": f"no {pair.reference}"})
            scored[(pair.dataset, pair.run)] = None
            continue
        if pair.qrels not in qrels_cache:
            qrels_cache[pair.qrels] = read_qrels(pair.qrels)
        qrels = qrels_cache[pair.qrels]
        mine, theirs = read_run_dict(pair.ours), read_run_dict(pair.reference)
        ranking = ranking_agreement(mine, theirs)
        ours_q = _per_query(mine, pair, qrels, measure_columns, "run")
        theirs_q = _per_query(theirs, pair, qrels, measure_columns, "reference")
        missing = [m for m in measures if m not in ours_q.columns]
        if missing:
            raise InputError(f"compare: no measure(s) {missing}; known: {list(ours_q.columns)}")
        scored[(pair.dataset, pair.run)] = (ours_q, theirs_q)
        rmse = effectiveness_agreement(ours_q, theirs_q, measures)
        common = set(ours_q["query_id"]) & set(theirs_q["query_id"])
        record |= {
            "topics": len(ranking),
            "only_ours": len(set(mine) - set(theirs)),
            "only_reference": len(set(theirs) - set(mine)),
            "identical_files": Path(pair.ours).read_bytes() == Path(pair.reference).read_bytes(),
            "ktu": float(ranking["ktu"].mean()) if len(ranking) else math.nan,
            "rbo": float(ranking["rbo"].mean()) if len(ranking) else math.nan,
        }
        deltas = {}
        for measure in measures:
            ours_mean = float(ours_q[ours_q["query_id"].isin(common)][measure].mean())
            ref_mean = float(theirs_q[theirs_q["query_id"].isin(common)][measure].mean())
            deltas[measure] = ours_mean - ref_mean
            record |= {
                f"{measure}": ours_mean,
                f"{measure} reference": ref_mean,
                f"{measure} delta": ours_mean - ref_mean,
                f"{measure} rmse": rmse[measure],
            }
        record["status"] = status_of(ranking, deltas, tolerance)
        record["note"] = ""
        rows.append(record)
        for item in ranking.to_dict("records"):
            topics.append({"dataset": pair.dataset, "run": pair.run, **item})
    effects = []
    for dataset, base, advanced in baseline_pairs:
        b, a = scored.get((dataset, base)), scored.get((dataset, advanced))
        if b is None or a is None:
            continue
        values = effect_agreement(b[0], a[0], b[1], a[1], measures)
        record = {"dataset": dataset, "baseline": base, "advanced": advanced}
        for measure in measures:
            record[f"{measure} ER"] = values[measure]["ER"]
            record[f"{measure} dRI"] = values[measure]["dRI"]
        effects.append(record)
    run_columns = ["dataset", "run", "status", "topics", "only_ours", "only_reference"]
    run_columns += ["identical_files", "ktu", "rbo"]
    for measure in measures:
        run_columns += [measure, f"{measure} reference", f"{measure} delta", f"{measure} rmse"]
    effect_columns = ["dataset", "baseline", "advanced"]
    for measure in measures:
        effect_columns += [f"{measure} ER", f"{measure} dRI"]
    return (
        pd.DataFrame(rows).reindex(columns=[*run_columns, "note"]),
        pd.DataFrame(topics, columns=["dataset", "run", "query_id", "ktu", "rbo"]),
        pd.DataFrame(effects, columns=effect_columns),
    )


def markdown(
    runs: pd.DataFrame, effects: pd.DataFrame, measures: list[str], reference: str, tolerance: float
) -> str:
    """The comparison as Markdown: one line per run, then the pairs' ER and ΔRI."""
    counts = runs["status"].value_counts().to_dict()
    lines = [
        "# Rerun vs reference",
        "",
        f"Reference run files: `{reference}`. KTU: Kendall's τ union, RBO: rank-biased overlap "
        f"(p = {RBO_P}), means over the topics both runs have (1: the same rankings); RMSE of "
        f"the per-topic scores (0: the same scores); Δ = this run − reference. Status: "
        f"reproduced (same rankings), within tolerance (every |Δ| ≤ {tolerance:g}), differs, "
        f"missing (Breuer et al., SIGIR 2020; computed with repro_eval).",
        "",
        ", ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES),
        "",
    ]
    view = []
    for _, r in runs.iterrows():
        entry = {"dataset": r["dataset"], "run": r["run"], "status": r["status"]}
        if r["status"] != "missing":
            entry |= {"KTU": f"{r['ktu']:.4f}", "RBO": f"{r['rbo']:.4f}"}
            for m in measures:
                entry[m] = f"{r[m]:.4f} ({r[f'{m} delta']:+.4f}) RMSE {r[f'{m} rmse']:.4f}"
        view.append(entry)
    lines.append(pd.DataFrame(view).fillna("").to_markdown(index=False, disable_numparse=True))
    if len(effects):
        lines += [
            "",
            "Baseline/advanced pairs: effect ratio ER (1: the same improvement) and ΔRI (0: the "
            "same relative improvement).",
            "",
        ]
        view = []
        for _, r in effects.iterrows():
            entry = {"dataset": r["dataset"], "baseline": r["baseline"], "advanced": r["advanced"]}
            for m in measures:
                entry[f"{m} ER"] = f"{r[f'{m} ER']:.4f}"
                entry[f"{m} ΔRI"] = f"{r[f'{m} dRI']:+.4f}"
            view.append(entry)
        lines.append(pd.DataFrame(view).to_markdown(index=False, disable_numparse=True))
    return "\n".join(lines) + "\n"


def write_comparison(
    pairs: list[RunPair],
    measures: list[str],
    baseline_pairs: list[tuple[str, str, str]],
    reference: str,
    tsv_out: str,
    topics_out: str,
    effects_out: str,
    markdown_out: str,
    tolerance: float = DEFAULT_TOLERANCE,
) -> pd.DataFrame:
    runs, topics, effects = compare_runs(pairs, measures, baseline_pairs, tolerance)
    for frame, path in ((runs, tsv_out), (topics, topics_out), (effects, effects_out)):
        with atomic_output(path) as tmp:
            frame.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    with atomic_output(markdown_out) as tmp:
        tmp.write_text(markdown(runs, effects, measures, reference, tolerance), encoding="utf-8")
    for _, row in runs[runs["status"] != "reproduced"].iterrows():
        log.warning("%s %s: %s %s", row["dataset"], row["run"], row["status"], row["note"] or "")
    return runs
