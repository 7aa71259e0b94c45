"""The training queries of a training set: judged queries with positives, optionally a seeded
subsample, refused when they leak into a held-out test set.

Writes the selected queries (Parquet, like ``prepare_topics``) and all judgements of those
queries (TREC qrels: mining needs the non-positive judgements too, to exclude judged documents).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from irflow.data import QUERIES_SCHEMA, read_queries
from irflow.io import (
    InputError,
    atomic_output,
    read_qrels,
    write_json_atomic,
    write_trec_qrels,
)
from irflow.training_data.pairs import check_leakage, normalise_query, training_pairs


def leaking_queries(train: dict[str, str], test_sets: dict[str, dict[str, str]]) -> list[str]:
    """Training query ids whose id or normalised text occurs in any test set."""
    test_ids = {q for test in test_sets.values() for q in test}
    test_texts = {normalise_query(t) for test in test_sets.values() for t in test.values()}
    return sorted(
        q for q, text in train.items() if q in test_ids or normalise_query(text) in test_texts
    )


def subsample(query_ids: list[str], max_queries: int | None, seed: int) -> list[str]:
    """``max_queries`` ids drawn without replacement with a seed; all of them when None."""
    ids = sorted(query_ids)
    if max_queries is None or max_queries >= len(ids):
        return ids
    digest = hashlib.sha256(f"select-training-queries:{seed}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    return sorted(rng.choice(ids, size=max_queries, replace=False).tolist())


def select_training_queries(
    queries_parquet: str | os.PathLike,
    qrels_path: str | os.PathLike,
    held_out_queries: dict[str, str | os.PathLike],
    out_queries: str | os.PathLike,
    out_qrels: str | os.PathLike,
    stats_json: str | os.PathLike,
    min_label: int,
    max_queries: int | None = None,
    seed: int = 0,
    on_leak: str = "error",
) -> dict[str, Any]:
    """``on_leak="error"`` refuses a training set sharing query ids or texts with a held-out
    set; ``"drop"`` removes those training queries first and lists them in the stats."""
    if on_leak not in ("error", "drop"):
        raise ValueError(f"on_leak must be 'error' or 'drop', not {on_leak!r}")
    queries = read_queries(str(queries_parquet))
    qrels = read_qrels(qrels_path)
    try:
        pairs = training_pairs(queries, qrels, min_label)
    except InputError as err:  # name the files that disagree
        raise InputError(f"{queries_parquet} / {qrels_path}: {err}") from None
    held_out = {name: read_queries(str(path)) for name, path in held_out_queries.items()}
    dropped = []
    if on_leak == "drop":
        dropped = leaking_queries({q: queries[q] for q in pairs}, held_out)
    selected = subsample([q for q in pairs if q not in set(dropped)], max_queries, seed)
    leakage = check_leakage({q: queries[q] for q in selected}, held_out)
    with atomic_output(out_queries) as tmp:
        table = pa.table(
            {"query_id": selected, "text": [queries[q] for q in selected]}, schema=QUERIES_SCHEMA
        )
        pq.write_table(table, tmp)
    write_trec_qrels(out_qrels, {q: qrels[q] for q in selected})
    stats = {
        "pairs": pairs.stats,
        "max_queries": max_queries,
        "seed": seed,
        "selected_queries": len(selected),
        "selected_positives": sum(len(pairs[q]) for q in selected),
        "dropped_leaking_queries": dropped,
        "leakage_check": leakage,
    }
    write_json_atomic(stats_json, stats)
    return stats
