"""Run evaluation with ir-measures, computed by its pytrec_eval provider (trec_eval's own code).

Metrics know nothing of benchmarks: the caller passes the relevance level that binary measures
use (2 for TREC DL's graded labels, 1 for binary qrels).

Query coverage follows an explicit policy instead of trec_eval's silent defaults:

* a run query that has no judgements is an error (``unjudged="error"``) or is dropped and
  reported (``unjudged="report"``);
* a judged query missing from the run scores 0 on every measure (as ``trec_eval -c``) and is
  reported in the ``queries_missing_from_run`` column; with full coverage the means equal
  trec_eval's defaults exactly.
"""

from __future__ import annotations

import logging
import math

import pandas as pd

from irflow.io import InputError, atomic_output, ranked

log = logging.getLogger(__name__)

# Column name -> ir-measures measure; {rel} is the dataset's binary relevance level.
DEFAULT_MEASURES: dict[str, str] = {
    "nDCG@10": "nDCG@10",
    "RR@10": "RR(rel={rel})@10",
    "AP": "AP(rel={rel})",
    "R-Prec": "Rprec(rel={rel})",
    "P@10": "P(rel={rel})@10",
    "R@100": "R(rel={rel})@100",
}


def parse_measures(columns: dict[str, str], rel: int):
    import ir_measures

    parsed = {}
    for column, spec in columns.items():
        try:
            measure = ir_measures.parse_measure(spec.format(rel=rel))
        except (ValueError, KeyError, NameError, AttributeError) as err:
            raise InputError(
                f"evaluation measure {column!r}: cannot parse {spec!r} ({err})"
            ) from None
        if not ir_measures.pytrec_eval.supports(_without_rr_cutoff(measure)):
            raise InputError(
                f"evaluation measure {column!r}: {measure} is not computed by trec_eval "
                f"(pytrec_eval); use a trec_eval measure"
            )
        parsed[column] = measure
    return parsed


def _rr_cutoff(measure) -> int | None:
    return measure["cutoff"] if measure.NAME == "RR" and measure.params.get("cutoff") else None


def _without_rr_cutoff(measure):
    """trec_eval's recip_rank has no cutoff, and ir-measures' pytrec_eval provider silently
    drops RR's: RR@k is computed as RR on the run cut to each query's top k instead."""
    cutoff = _rr_cutoff(measure)
    if cutoff is None:
        return measure
    return type(measure)(**{k: v for k, v in measure.params.items() if k != "cutoff"})


def evaluate_run(
    run: dict[str, dict[str, float]],
    qrels: dict[str, dict[str, int]],
    rel: int,
    measures: dict[str, str] | None = None,
    unjudged: str = "error",
    run_name: str = "run",
) -> tuple[dict[str, float | int], pd.DataFrame]:
    """Return (mean row, per-query table) for one run against one qrels."""
    import ir_measures

    if unjudged not in ("error", "report"):
        raise ValueError(f"unjudged must be 'error' or 'report', not {unjudged!r}")
    parsed = parse_measures(measures or DEFAULT_MEASURES, rel)
    unjudged_ids = sorted(set(run) - set(qrels))
    if unjudged_ids and unjudged == "error":
        raise InputError(
            f"{run_name}: {len(unjudged_ids)} run queries have no judgements in the qrels, e.g. "
            f"{unjudged_ids[:5]}; check that the run and qrels belong to the same dataset and "
            f"split, or set 'evaluation: unjudged_queries: report' to drop them"
        )
    if unjudged_ids:
        log.warning(
            "%s: dropping %d unjudged run queries: %s",
            run_name,
            len(unjudged_ids),
            unjudged_ids[:20],
        )
    scored_run = {qid: docs for qid, docs in run.items() if qid in qrels}
    missing = sorted(q for q in qrels if not scored_run.get(q))
    if missing:
        log.warning(
            "%s: %d judged queries missing from the run score 0: %s",
            run_name,
            len(missing),
            missing[:20],
        )

    values: dict[str, dict[str, float]] = {qid: {} for qid in qrels}
    plain = {c: m for c, m in parsed.items() if _rr_cutoff(m) is None}
    by_measure = {m: c for c, m in plain.items()}
    for metric in ir_measures.pytrec_eval.iter_calc(list(plain.values()), qrels, scored_run):
        values[metric.query_id][by_measure[metric.measure]] = float(metric.value)
    for column, measure in parsed.items():
        cutoff = _rr_cutoff(measure)
        if cutoff is None:
            continue
        cut_run = {qid: dict(ranked(docs)[:cutoff]) for qid, docs in scored_run.items()}
        for metric in ir_measures.pytrec_eval.iter_calc(
            [_without_rr_cutoff(measure)], qrels, cut_run
        ):
            values[metric.query_id][column] = float(metric.value)
    for qid in values:
        for column in parsed:
            # pytrec_eval omits queries absent from the run: they score zero on every measure.
            value = values[qid].setdefault(column, 0.0)
            if not math.isfinite(value):
                raise InputError(f"{run_name}: measure {column} is {value} for query {qid}")

    per_query = pd.DataFrame.from_dict(values, orient="index", columns=list(parsed))
    per_query.index.name = "query_id"
    per_query = per_query.sort_index()
    mean: dict[str, float | int] = {column: float(per_query[column].mean()) for column in parsed}
    mean.update(
        queries=len(qrels),
        queries_missing_from_run=len(missing),
        unjudged_run_queries_dropped=len(unjudged_ids),
    )
    return mean, per_query


def write_metrics(
    mean: dict, per_query: pd.DataFrame, labels: dict[str, str], mean_path: str, per_query_path: str
):
    """Write the one-row mean table (with identifying labels first) and the per-query table."""
    row = {**labels, **mean}
    with atomic_output(mean_path) as tmp:
        pd.DataFrame([row]).to_csv(tmp, sep="\t", index=False, float_format="%.4f")
    with atomic_output(per_query_path) as tmp:
        per_query.to_csv(tmp, sep="\t", float_format="%.6f")


def aggregate_tables(paths: list[str], tsv_out: str, markdown_out: str, title: str) -> pd.DataFrame:
    """Concatenate per-run metric rows into one table, as TSV and Markdown."""
    frames = [pd.read_csv(p, sep="\t", dtype={"dataset": str, "run": str}) for p in paths]
    if not frames:
        raise InputError("no metric tables to aggregate")
    table = pd.concat(frames, ignore_index=True)
    with atomic_output(tsv_out) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.4f")
    with atomic_output(markdown_out) as tmp:
        tmp.write_text(
            f"# {title}\n\n" + table.to_markdown(index=False, floatfmt=".4f") + "\n",
            encoding="utf-8",
        )
    return table
