"""Consistency filtering of teacher-scored samples (as in Gecko and Nomic Embed).

A negative that the teacher scores at or above its sample's positive, less a margin, is probably
an unjudged positive (or the positive is a bad label). Two modes:

* ``drop_negatives``: remove only the negatives with ``neg_score >= pos_score - margin``;
* ``drop_samples``: drop the whole sample if any negative has ``neg_score >= pos_score -
  margin`` (the positive's label is then in doubt, not just the negative's).

Afterwards a sample left with fewer than ``min_negatives`` negatives is dropped. ``margin`` is in
the teacher's score units (cosine, logit or yes-minus-no logit; the input's metadata says which),
so a margin tuned for one teacher does not carry over to another; a negative margin keeps
negatives up to ``|margin|`` above the positive.

Input and output are scores files (:data:`.teacher.SCORES_SCHEMA`, same columns and row order;
kept rows and, within a row, kept negatives stay in their order). The output's ``irflow``
metadata is the input's with this filter appended to its ``filters`` list, so filters chain.
Stats: samples and negatives in and out, and what each rule dropped.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from irflow.io import write_json_atomic
from irflow.training_data.artifacts import (
    SCORES_SCHEMA,
    ParquetSink,
    check_columns,
    check_finite_scores,
    read_meta,
)


@dataclass(frozen=True)
class ConsistencyParams:
    mode: Literal["drop_negatives", "drop_samples"] = "drop_negatives"
    margin: float = 0.0
    min_negatives: int = 1

    def __post_init__(self):
        if self.mode not in ("drop_negatives", "drop_samples"):
            raise ValueError(
                f"consistency filter: mode must be 'drop_negatives' or 'drop_samples', "
                f"got {self.mode!r}"
            )
        if not np.isfinite(self.margin):
            raise ValueError(f"consistency filter: margin must be finite, got {self.margin}")
        if self.min_negatives < 0:
            raise ValueError("consistency filter: min_negatives must be >= 0")

    @classmethod
    def from_config(cls, entry: dict[str, Any]) -> ConsistencyParams:
        entry = {k: v for k, v in entry.items() if k != "description"}
        unknown = sorted(set(entry) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"consistency filter: unknown parameters {unknown}")
        return cls(**entry)


def _new_stats(params: ConsistencyParams) -> dict[str, Any]:
    return {
        "params": asdict(params),
        "samples_in": 0,
        "samples_out": 0,
        "negatives_in": 0,
        "negatives_out": 0,
        "negatives_dropped_inconsistent": 0,
        "samples_dropped_inconsistent": 0,
        "samples_dropped_too_few_negatives": 0,
    }


def filter_scores(
    table: pa.Table, params: ConsistencyParams, stats: dict[str, Any] | None = None
) -> pa.Table:
    """Apply the filter to one table of :data:`SCORES_SCHEMA` rows; ``stats`` is updated."""
    stats = stats if stats is not None else _new_stats(params)
    lists = table.column("neg_scores").combine_chunks()
    neg = lists.flatten().to_numpy(zero_copy_only=False)
    lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    pos = table.column("pos_score").to_numpy()
    owner = np.repeat(np.arange(table.num_rows), lengths)
    # Compare in float64: the threshold pos - margin must not round differently per row.
    bad = neg.astype(np.float64) >= pos.astype(np.float64)[owner] - params.margin
    bad_per_row = np.bincount(owner, weights=bad, minlength=table.num_rows).astype(np.int64)
    stats["samples_in"] += table.num_rows
    stats["negatives_in"] += int(neg.size)
    if params.mode == "drop_samples":
        keep_neg = np.ones(neg.size, dtype=bool)
        inconsistent = bad_per_row > 0
        stats["samples_dropped_inconsistent"] += int(inconsistent.sum())
        keep_row = ~inconsistent
    else:
        keep_neg = ~bad
        stats["negatives_dropped_inconsistent"] += int(bad.sum())
        keep_row = np.ones(table.num_rows, dtype=bool)
    left = lengths - np.bincount(owner, weights=~keep_neg, minlength=table.num_rows).astype(
        np.int64
    )
    too_few = keep_row & (left < params.min_negatives)
    stats["samples_dropped_too_few_negatives"] += int(too_few.sum())
    keep_row &= ~too_few
    keep_neg &= keep_row[owner]
    new_lengths = left[keep_row]
    offsets = np.concatenate([[0], np.cumsum(new_lengths)]).astype(np.int32)
    neg_ids = table.column("neg_ids").combine_chunks().flatten().filter(pa.array(keep_neg))
    neg_scores = lists.flatten().filter(pa.array(keep_neg))
    mask = pa.array(keep_row)
    out = pa.table(
        {
            "query_id": table.column("query_id").filter(mask),
            "pos_id": table.column("pos_id").filter(mask),
            "pos_score": table.column("pos_score").filter(mask),
            "neg_ids": pa.ListArray.from_arrays(pa.array(offsets), neg_ids),
            "neg_scores": pa.ListArray.from_arrays(pa.array(offsets), neg_scores),
        },
        schema=SCORES_SCHEMA,
    )
    stats["samples_out"] += out.num_rows
    stats["negatives_out"] += int(offsets[-1])
    return out


def filter_consistency(
    scores_parquet: str | os.PathLike,
    out_parquet: str | os.PathLike,
    stats_json: str | os.PathLike | None = None,
    params: ConsistencyParams | dict[str, Any] | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Filter a scores file (merged teacher scores, or an earlier filter's output) to a file.

    ``name`` (the filter's config name) is recorded in the output's metadata. Returns the stats
    (also written to ``stats_json``).
    """
    if not isinstance(params, ConsistencyParams):
        params = ConsistencyParams.from_config(dict(params or {}))
    meta = read_meta(scores_parquet, "teacher-scores")
    check_columns(scores_parquet, SCORES_SCHEMA)
    meta["filters"] = [
        *meta.get("filters", []),
        {"kind": "consistency", "name": name, **asdict(params)},
    ]
    stats = _new_stats(params)
    stats["score_kind"] = meta["score_kind"]
    stats["teacher"] = meta["teacher"]["name"]
    row = 0
    with ParquetSink(out_parquet, SCORES_SCHEMA, meta) as sink:
        for batch in pq.ParquetFile(scores_parquet).iter_batches(batch_size=8192):
            table = pa.Table.from_batches([batch])
            # NaN compares false both ways: a NaN negative would pass as consistent.
            check_finite_scores(table, scores_parquet, row)
            row += table.num_rows
            sink.write(filter_scores(table, params, stats))
    if stats_json is not None:
        write_json_atomic(stats_json, stats)
    return stats
