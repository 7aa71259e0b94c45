"""Training (query, positive) pairs from qrels, and the train/test leakage check.

A positive is a judged document with label ``>= min_label``. Queries whose judgements hold no
positive are dropped and counted; a judged query with no text is an error naming it (the
queries and qrels files disagree, which silently shrinks the training set otherwise).

:func:`check_leakage` refuses a training set that shares a query with any test set: by id, or by
text after normalisation (Unicode NFKC, casefold, whitespace collapsed), because benchmark
queries reappear under new ids in derived collections.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from irflow.io import InputError

SHOW = 10  # how many offending items an error message lists


class TrainingPairs(dict):
    """``{query_id: [positive doc ids, sorted]}`` with the counts behind it in ``.stats``."""

    stats: dict[str, Any]


def training_pairs(
    queries: dict[str, str], qrels: dict[str, dict[str, int]], min_label: int
) -> TrainingPairs:
    """Each judged query's positives (label >= ``min_label``), doc ids sorted.

    ``.stats`` of the result counts ``judged_queries``, ``queries`` (kept),
    ``queries_without_positives`` (dropped), ``positives`` and ``judgements``.
    Raises :class:`InputError` naming the judged queries that have no text (or empty text).
    """
    missing = sorted(qid for qid in qrels if qid not in queries)
    if missing:
        raise InputError(
            f"{len(missing)} judged queries have no text in the queries: {missing[:SHOW]}"
        )
    empty = sorted(qid for qid in qrels if not queries[qid].strip())
    if empty:
        raise InputError(f"judged queries with empty text: {empty[:SHOW]}")
    pairs = TrainingPairs()
    without = 0
    for qid in sorted(qrels):
        positives = sorted(d for d, label in qrels[qid].items() if label >= min_label)
        if positives:
            pairs[qid] = positives
        else:
            without += 1
    pairs.stats = {
        "min_label": min_label,
        "judged_queries": len(qrels),
        "judgements": sum(len(docs) for docs in qrels.values()),
        "queries": len(pairs),
        "queries_without_positives": without,
        "positives": sum(len(p) for p in pairs.values()),
    }
    return pairs


def normalise_query(text: str) -> str:
    """Unicode NFKC, casefolded, whitespace runs collapsed to one space and stripped."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def check_leakage(
    train_queries: dict[str, str],
    test_sets: dict[str, dict[str, str]],
    *,
    by_id: bool = True,
    by_text: bool = True,
) -> dict[str, Any]:
    """Refuse training queries that occur in a test set, by id or by normalised text.

    Raises :class:`InputError` listing, per test set, the shared query ids and the pairs of
    (train id, test id) whose normalised texts are identical. ``by_id=False`` is for test sets
    whose ids live in another id space (ids then say nothing); texts are still compared.
    Returns a summary (queries compared per test set) for the stats JSON.
    """
    train_text: dict[str, list[str]] = {}
    for qid in sorted(train_queries):
        train_text.setdefault(normalise_query(train_queries[qid]), []).append(qid)
    problems: list[str] = []
    summary: dict[str, Any] = {"train_queries": len(train_queries), "test_sets": {}}
    for name in sorted(test_sets):
        test = test_sets[name]
        summary["test_sets"][name] = len(test)
        shared_ids = sorted(set(train_queries) & set(test)) if by_id else []
        same_text: list[tuple[str, str, str]] = []
        if by_text:
            for test_id in sorted(test):
                key = normalise_query(test[test_id])
                same_text.extend((train_id, test_id, key) for train_id in train_text.get(key, []))
        if shared_ids:
            problems.append(
                f"test set {name!r} shares {len(shared_ids)} query ids with the training "
                f"queries: {shared_ids[:SHOW]}"
            )
        if same_text:
            shown = ", ".join(
                f"train {t!r} = test {s!r} ({text[:60]!r})" for t, s, text in same_text[:SHOW]
            )
            problems.append(
                f"test set {name!r} has {len(same_text)} queries whose normalised text equals a "
                f"training query's: {shown}"
            )
    if problems:
        raise InputError("training queries leak into test sets: " + "; ".join(problems))
    return summary
