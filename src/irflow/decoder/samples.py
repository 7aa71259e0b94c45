"""Training inputs of the unified decoder: the workflow's scored samples, queries and corpus.

Samples are a scores file (:data:`irflow.training_data.teacher.SCORES_SCHEMA`: ``query_id``,
``pos_id``, ``pos_score``, ``neg_ids``, ``neg_scores``), i.e. the output of teacher scoring or
of the consistency filter; the teacher scores are not used by these losses (the filter already
used them), only the ids. Only the documents the samples name are read from the corpus
(:class:`irflow.training_data.teacher.CorpusTexts`).

Batches are drawn per task from its own seeded generator (``numpy`` PCG64 seeded with
``[seed, task index]``): a seeded permutation of the samples, reshuffled at each epoch, with
``num_negatives`` hard negatives drawn per sample without replacement (all of them when a
sample has fewer). A task's batches therefore do not depend on which other tasks train.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from irflow.io import InputError, sha256_file
from irflow.training_data.pairs import SHOW

from .spec import TASKS


@dataclass
class TrainingSet:
    query_ids: list[str]
    pos_ids: list[str]
    neg_ids: list[list[str]]
    queries: dict[str, str]
    docs: dict[str, str]
    positives: dict[str, set[str]] = field(default_factory=dict)
    source: dict[str, object] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.query_ids)


def read_training_set(
    samples_parquet: str | os.PathLike,
    queries_parquet: str | os.PathLike,
    corpus_parquet: str | os.PathLike,
) -> TrainingSet:
    """Read samples, their query texts and their documents' texts; refuse anything missing."""
    from irflow.data import read_queries
    from irflow.training_data.artifacts import SCORES_SCHEMA, check_columns
    from irflow.training_data.teacher import CorpusTexts

    samples_parquet = str(samples_parquet)
    if not os.path.isfile(samples_parquet):
        raise InputError(f"{samples_parquet}: file not found")
    check_columns(samples_parquet, SCORES_SCHEMA)
    table = pq.read_table(samples_parquet, columns=["query_id", "pos_id", "neg_ids"])
    if table.num_rows == 0:
        raise InputError(f"{samples_parquet}: no training samples")
    query_ids = table.column("query_id").to_pylist()
    pos_ids = table.column("pos_id").to_pylist()
    neg_ids = table.column("neg_ids").to_pylist()
    queries = read_queries(str(queries_parquet))
    absent = sorted(set(query_ids) - set(queries))
    if absent:
        raise InputError(
            f"{len(absent)} queries of {samples_parquet} have no text in {queries_parquet}: "
            f"{absent[:SHOW]}"
        )
    needed = pa.concat_arrays(
        [
            table.column("pos_id").combine_chunks(),
            pc.list_flatten(table.column("neg_ids")).combine_chunks(),
        ]
    )
    corpus = CorpusTexts(str(corpus_parquet), needed)
    if corpus.missing:
        raise InputError(
            f"{len(corpus.missing)} documents of {samples_parquet} are not in the corpus "
            f"{corpus_parquet}: {corpus.missing[:SHOW]}"
        )
    docs = corpus.texts(sorted(set(needed.to_pylist())))
    positives: dict[str, set[str]] = {}
    for qid, pos in zip(query_ids, pos_ids, strict=True):
        positives.setdefault(qid, set()).add(pos)
    return TrainingSet(
        query_ids=query_ids,
        pos_ids=pos_ids,
        neg_ids=neg_ids,
        queries={q: queries[q] for q in set(query_ids)},
        docs=docs,
        positives=positives,
        source={
            "samples": samples_parquet,
            "samples_sha256": sha256_file(samples_parquet),
            "rows": table.num_rows,
        },
    )


@dataclass
class Batch:
    """One task's batch: sample rows and the negatives drawn for each."""

    rows: list[int]
    negatives: list[list[str]]


class TaskSampler:
    """Endless seeded batches of one task (see the module docstring)."""

    def __init__(self, size: int, batch_size: int, num_negatives: int, seed: int, task: str):
        self.size = size
        self.batch_size = min(batch_size, size)
        self.num_negatives = num_negatives
        self.rng = np.random.default_rng([seed, TASKS.index(task)])
        self.order: list[int] = []
        self.epoch = 0
        self.drawn = 0

    def state_dict(self) -> dict[str, Any]:
        """Position and random state, for a resumable checkpoint."""
        return {
            "rng": self.rng.bit_generator.state,
            "order": list(self.order),
            "epoch": self.epoch,
            "drawn": self.drawn,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.order = list(state["order"])
        self.epoch = state["epoch"]
        self.drawn = state["drawn"]

    def _take(self) -> int:
        if not self.order:
            self.order = self.rng.permutation(self.size).tolist()
            self.epoch += 1
        return self.order.pop(0)

    def next(self, data: TrainingSet) -> Batch:
        # A batch that straddles two epochs could meet a row twice: such a row waits for the
        # next batch (the fresh permutation always holds enough distinct rows).
        rows: list[int] = []
        deferred: list[int] = []
        while len(rows) < self.batch_size:
            row = self._take()
            (deferred if row in rows else rows).append(row)
        self.order = deferred + self.order
        negatives = []
        for row in rows:
            pool = data.neg_ids[row]
            if len(pool) <= self.num_negatives:
                negatives.append(list(pool))
            else:
                pick = np.sort(self.rng.choice(len(pool), self.num_negatives, replace=False))
                negatives.append([pool[i] for i in pick])
        self.drawn += len(rows)
        return Batch(rows, negatives)
