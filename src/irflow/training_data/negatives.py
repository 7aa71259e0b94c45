"""Hard negatives sampled from a first-stage run, with positive-aware false-negative filtering.

For every training sample (query, positive) this draws ``num_negatives`` documents from the
query's first-stage run, inside a rank window, leaving out:

1. every judged document with label ``>= min_label`` (the positives, so no positive is ever a
   negative), and with ``exclude_judged`` also every judged document with ``0 < label <
   min_label`` (partially relevant documents of graded qrels); judged label-0 documents stay
   eligible: they are the best negatives there are;
2. likely false negatives, by NV-Retriever's positive-aware rule (Moreira et al. 2024, "TopK-
   PercPos"): a candidate scoring above ``relative_margin`` times the positive's retriever score
   (default 0.95) is dropped; ``absolute_margin`` drops a candidate scoring above
   ``pos_score - absolute_margin``. Both compare *retriever* scores.

The relative rule assumes similarity scores with a meaningful zero (cosine similarity, BM25's
non-negative scores); it is meaningless for logits or other shift-invariant scores, where only
``absolute_margin`` makes sense. For a negative positive score the threshold is
``pos - |pos| * (1 - relative_margin)`` (so it stays *below* the positive, as in
sentence-transformers); for ``pos >= 0`` it is exactly ``relative_margin * pos``. Note the name:
sentence-transformers' ``relative_margin=0.05`` is the same rule as ``relative_margin=0.95`` here
(this module's parameter is the fraction of the positive's score a negative may reach, as the
NV-Retriever paper states it).

Ranks are 1-based in trec_eval order (score descending, then doc id descending;
:func:`irflow.io.ranked`) over the whole run, positives included; the window
``[rank_min, rank_max]`` is inclusive and is applied to those original ranks before anything is
dropped, so ``neg_ranks`` are the documents' ranks in the run file.

**A positive that the run did not retrieve.** Its retriever score is unknown, and computing it
would need the retriever, not its run. If the run is a full-corpus top-N, the positive scores no
higher than the run's last document, so the rule "drop candidates above 95% of the positive"
would drop *every* candidate: the strict reading is to drop the sample. Such samples are often
the most useful ones (the lexical retriever missed a relevant document), so the default
(``missing_positive="keep"``) keeps the sample, applies no margin filter to it (the judged-
document exclusion still applies), writes ``pos_rank`` and ``pos_retriever_score`` as null, and
counts it in ``samples_positive_not_in_run``; ``missing_positive="drop"`` drops and counts it.
The teacher's consistency filter (:mod:`.consistency`) is the second line of defence for
exactly these samples.

**Sampling.** ``sampling="random"`` draws uniformly without replacement from the eligible
candidates; ``"top"`` takes the best-ranked eligible ones (NV-Retriever's TopK). The random
generator of each sample is ``numpy.random.default_rng`` seeded from SHA-256 of
``(seed, query id, positive id)``, so a sample's negatives depend on nothing else: not on query
order, other positives, the process, or ``PYTHONHASHSEED``. The negatives are stored in rank
order. Same inputs, parameters and NumPy version give byte-identical files.

**Why not** ``sentence_transformers.util.mine_hard_negatives``: it mines with its own embedding
model over a corpus held in memory (optionally rescored by a cross-encoder) and returns a
``datasets.Dataset`` of texts. This stage must mine from a *given* run artifact (BM25, a dense
run, or a run shipped with the dataset), keep document ids, ranks and retriever scores, use the
graded qrels for exclusion, and write a deterministic file per (query, positive). Its
``range_min`` is also applied after the filters (ranks shift), whereas here the window is on the
run's own ranks. Its filter rules are reproduced here (same sign-robust relative threshold), not
its retrieval.

Schema of ``negatives.parquet`` (:data:`NEGATIVES_SCHEMA`), one row per kept sample, sorted by
``(query_id, pos_id)``:

====================  ===============  ========================================================
column                type             meaning
====================  ===============  ========================================================
query_id              string           training query
pos_id                string           positive document (label >= min_label)
pos_label             int32            its qrels label
pos_rank              int32, null      its rank in the run; null if the run does not hold it
pos_retriever_score   float64, null    its retriever score; null if the run does not hold it
neg_ids               list<string>     negatives, in rank order (1 to ``num_negatives``)
neg_ranks             list<int32>      their ranks in the run
neg_scores            list<float64>    their retriever scores
====================  ===============  ========================================================

The schema metadata (``irflow`` key) holds ``{"artifact": "hard-negatives", "params": ...}``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from irflow.io import (
    InputError,
    open_parquet,
    ranked,
    read_qrels,
    read_run_dict,
    write_json_atomic,
)
from irflow.training_data.artifacts import ParquetSink
from irflow.training_data.pairs import SHOW, check_leakage, training_pairs

NEGATIVES_SCHEMA = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("pos_id", pa.string(), nullable=False),
        pa.field("pos_label", pa.int32(), nullable=False),
        pa.field("pos_rank", pa.int32()),
        pa.field("pos_retriever_score", pa.float64()),
        pa.field("neg_ids", pa.list_(pa.string()), nullable=False),
        pa.field("neg_ranks", pa.list_(pa.int32()), nullable=False),
        pa.field("neg_scores", pa.list_(pa.float64()), nullable=False),
    ]
)

WRITE_BATCH = 8192  # samples per table handed to the writer


@dataclass(frozen=True)
class MiningParams:
    """Parameters of hard-negative mining (see the module docstring for their meaning)."""

    num_negatives: int = 15
    rank_min: int = 10
    rank_max: int = 200
    seed: int = 0
    min_label: int = 1
    exclude_judged: bool = True
    relative_margin: float | None = 0.95
    absolute_margin: float | None = None
    missing_positive: Literal["keep", "drop"] = "keep"
    sampling: Literal["random", "top"] = "random"
    positives_without_text: Literal["error", "drop"] = "error"

    def __post_init__(self):
        problems = []
        if self.num_negatives < 1:
            problems.append(f"num_negatives must be >= 1, got {self.num_negatives}")
        if self.rank_min < 1 or self.rank_max < self.rank_min:
            problems.append(
                f"rank window must satisfy 1 <= rank_min <= rank_max, got "
                f"[{self.rank_min}, {self.rank_max}]"
            )
        if self.relative_margin is not None and not self.relative_margin > 0:
            problems.append(f"relative_margin must be > 0, got {self.relative_margin}")
        if self.absolute_margin is not None and not np.isfinite(self.absolute_margin):
            problems.append(f"absolute_margin must be finite, got {self.absolute_margin}")
        if self.missing_positive not in ("keep", "drop"):
            problems.append(f"missing_positive must be 'keep' or 'drop': {self.missing_positive!r}")
        if self.positives_without_text not in ("error", "drop"):
            problems.append(
                f"positives_without_text must be 'error' or 'drop', got "
                f"{self.positives_without_text!r}"
            )
        if self.sampling not in ("random", "top"):
            problems.append(f"sampling must be 'random' or 'top', got {self.sampling!r}")
        if problems:
            raise ValueError("hard-negative mining: " + "; ".join(problems))

    @classmethod
    def from_config(cls, entry: dict[str, Any]) -> MiningParams:
        """Parameters from a config entry; ``description`` is ignored, unknown keys refused."""
        entry = {k: v for k, v in entry.items() if k != "description"}
        unknown = sorted(set(entry) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"hard-negative mining: unknown parameters {unknown}")
        return cls(**entry)


def relative_threshold(pos_score: float, relative_margin: float) -> float:
    """Highest score a negative may have under the relative rule (sign-robust)."""
    if pos_score >= 0:
        return relative_margin * pos_score
    return (2.0 - relative_margin) * pos_score  # pos - |pos| * (1 - relative_margin)


def sample_rng(seed: int, query_id: str, pos_id: str) -> np.random.Generator:
    """A generator that depends only on (seed, query, positive), stable across processes."""
    digest = hashlib.sha256(f"{seed}\x1f{query_id}\x1f{pos_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def _new_stats(params: MiningParams) -> dict[str, Any]:
    return {
        "params": asdict(params),
        "queries": 0,
        "queries_out": 0,
        "samples_in": 0,
        "samples": 0,
        "negatives": 0,
        "candidates_considered": 0,
        "dropped_judged_positive": 0,
        "dropped_judged_relevant": 0,
        "dropped_margin": 0,
        "dropped_relative_margin": 0,
        "dropped_absolute_margin": 0,
        "samples_positive_not_in_run": 0,
        "samples_dropped_positive_not_in_run": 0,
        "samples_short": 0,
        "samples_dropped_no_negatives": 0,
    }


def _check_run_covers(pairs: dict[str, list[str]], run: dict[str, dict[str, float]], name: str):
    absent = [qid for qid in pairs if qid not in run]
    empty = [qid for qid in pairs if qid in run and not run[qid]]
    problems = []
    if absent:
        problems.append(f"{len(absent)} training queries are not in the run: {absent[:SHOW]}")
    if empty:
        problems.append(
            f"{len(empty)} training queries have an empty candidate list: {empty[:SHOW]}"
        )
    if problems:
        raise InputError(f"{name}: " + "; ".join(problems))


def iter_negatives(
    pairs: dict[str, list[str]],
    qrels: dict[str, dict[str, int]],
    run: dict[str, dict[str, float]],
    params: MiningParams,
    stats: dict[str, Any],
    run_name: str = "run",
) -> Iterator[dict[str, Any]]:
    """Yield one row (a dict of :data:`NEGATIVES_SCHEMA` columns) per kept sample.

    ``stats`` (from :func:`_new_stats`) is updated in place. Raises :class:`InputError` naming
    the training queries missing from the run or with no candidates, before yielding anything.
    """
    _check_run_covers(pairs, run, run_name)
    p = params
    stats["queries"] += len(pairs)
    for qid in sorted(pairs):
        ranking = ranked(run[qid])
        rank_of = {doc: rank for rank, (doc, _) in enumerate(ranking, start=1)}
        labels = qrels.get(qid, {})
        window = ranking[p.rank_min - 1 : p.rank_max]
        # The judged-document exclusion does not depend on the positive: do it once per query.
        base: list[tuple[str, int, float]] = []
        judged_pos = judged_rel = 0
        for rank, (doc, score) in enumerate(window, start=p.rank_min):
            label = labels.get(doc)
            if label is not None and label >= p.min_label:
                judged_pos += 1
            elif p.exclude_judged and label is not None and label > 0:
                judged_rel += 1
            else:
                base.append((doc, rank, score))
        kept_any = False
        for pos in pairs[qid]:
            stats["samples_in"] += 1
            stats["candidates_considered"] += len(window)
            stats["dropped_judged_positive"] += judged_pos
            stats["dropped_judged_relevant"] += judged_rel
            pos_score = run[qid].get(pos)
            eligible = base
            if pos_score is None:
                stats["samples_positive_not_in_run"] += 1
                if p.missing_positive == "drop":
                    stats["samples_dropped_positive_not_in_run"] += 1
                    continue
            else:
                if p.relative_margin is not None:
                    limit = relative_threshold(pos_score, p.relative_margin)
                    kept = [c for c in eligible if not c[2] > limit]
                    stats["dropped_relative_margin"] += len(eligible) - len(kept)
                    eligible = kept
                if p.absolute_margin is not None:
                    limit = pos_score - p.absolute_margin
                    kept = [c for c in eligible if not c[2] > limit]
                    stats["dropped_absolute_margin"] += len(eligible) - len(kept)
                    eligible = kept
                stats["dropped_margin"] += len(base) - len(eligible)
            if not eligible:
                stats["samples_dropped_no_negatives"] += 1
                continue
            if len(eligible) < p.num_negatives:
                stats["samples_short"] += 1
                chosen = eligible
            elif p.sampling == "top":
                chosen = eligible[: p.num_negatives]
            else:
                picks = sample_rng(p.seed, qid, pos).choice(
                    len(eligible), size=p.num_negatives, replace=False
                )
                chosen = [eligible[i] for i in np.sort(picks)]
            kept_any = True
            stats["samples"] += 1
            stats["negatives"] += len(chosen)
            yield {
                "query_id": qid,
                "pos_id": pos,
                "pos_label": labels[pos],
                "pos_rank": rank_of.get(pos),
                "pos_retriever_score": pos_score,
                "neg_ids": [c[0] for c in chosen],
                "neg_ranks": [c[1] for c in chosen],
                "neg_scores": [c[2] for c in chosen],
            }
        stats["queries_out"] += kept_any


def _tables(rows: Iterator[dict[str, Any]], batch: int = WRITE_BATCH) -> Iterator[pa.Table]:
    buffer: list[dict[str, Any]] = []
    for row in rows:
        buffer.append(row)
        if len(buffer) >= batch:
            yield pa.Table.from_pylist(buffer, schema=NEGATIVES_SCHEMA)
            buffer = []
    if buffer:
        yield pa.Table.from_pylist(buffer, schema=NEGATIVES_SCHEMA)


def mine_negatives(
    pairs: dict[str, list[str]],
    qrels: dict[str, dict[str, int]],
    run: dict[str, dict[str, float]],
    params: MiningParams | None = None,
    run_name: str = "run",
) -> tuple[pa.Table, dict[str, Any]]:
    """Mine in memory: the :data:`NEGATIVES_SCHEMA` table and the stats (see module docstring).

    ``pairs`` is :func:`.pairs.training_pairs`'s output; ``qrels`` the training qrels;
    ``run`` ``{query_id: {doc_id: score}}``.
    """
    params = params or MiningParams()
    stats = _new_stats(params)
    tables = list(_tables(iter_negatives(pairs, qrels, run, params, stats, run_name)))
    table = pa.concat_tables(tables) if tables else NEGATIVES_SCHEMA.empty_table()
    return table, stats


def _check_corpus(
    corpus_parquet: str, pairs: dict[str, list[str]], run, policy: str
) -> dict[str, Any]:
    """Check the positives and the run's documents against the corpus (see write_negatives).

    Returns the stats of the check; with ``policy="drop"`` ``pairs`` loses the positives that
    have no text (and queries left without positives).
    """
    ids = set(open_parquet(corpus_parquet).read(columns=["doc_id"]).column("doc_id").to_pylist())
    missing_run = sorted({d for q in pairs for d in run.get(q, {}) if d not in ids})
    if missing_run:
        raise InputError(
            f"{len(missing_run)} documents of the run are not in the corpus {corpus_parquet}: "
            f"{missing_run[:SHOW]}"
        )
    missing_pos = [(q, d) for q in sorted(pairs) for d in pairs[q] if d not in ids]
    if missing_pos and policy == "error":
        shown = ", ".join(f"{d!r} (query {q!r})" for q, d in missing_pos[:SHOW])
        raise InputError(
            f"{len(missing_pos)} positives are not in the corpus {corpus_parquet}: {shown} "
            f"(set positives_without_text: drop for collections that hold only some judged "
            f"documents' text, such as the DL top-100 folders)"
        )
    emptied = []
    for qid, doc in missing_pos:
        pairs[qid].remove(doc)
        if not pairs[qid]:
            del pairs[qid]
            emptied.append(qid)
    return {
        "corpus_documents": len(ids),
        "positives_dropped_without_text": len(missing_pos),
        "queries_dropped_without_positive_text": len(emptied),
        "examples_dropped_without_text": [f"{q}/{d}" for q, d in missing_pos[:SHOW]],
    }


def write_negatives(
    queries_parquet: str | os.PathLike,
    qrels_path: str | os.PathLike,
    run_path: str | os.PathLike,
    out_parquet: str | os.PathLike,
    stats_json: str | os.PathLike,
    params: MiningParams | dict[str, Any] | None = None,
    corpus_parquet: str | os.PathLike | None = None,
    test_queries: dict[str, str | os.PathLike] | None = None,
) -> dict[str, Any]:
    """Mine hard negatives for a training set from files; write the Parquet and its stats.

    ``queries_parquet``/``qrels_path`` are the training set's (``prepare_topics`` outputs),
    ``run_path`` its first-stage TREC run. With ``corpus_parquet`` every run document of the
    training queries must be in the corpus, and so must every positive: a positive without
    text is an :class:`InputError` (``positives_without_text="error"``) or is dropped and
    counted (``"drop"``; for collections holding only some documents' text, e.g. the DL
    top-100 folders), all checked before anything is written. ``test_queries``
    (``{test set name: queries.parquet}``) runs :func:`.pairs.check_leakage` first. Returns the
    stats that are also written to ``stats_json``.
    """
    from irflow.data import read_queries

    if not isinstance(params, MiningParams):
        params = MiningParams.from_config(dict(params or {}))
    queries = read_queries(str(queries_parquet))
    qrels = read_qrels(qrels_path)
    try:
        pairs = training_pairs(queries, qrels, params.min_label)
    except InputError as err:
        raise InputError(f"{queries_parquet} / {qrels_path}: {err}") from None
    leakage = None
    if test_queries:
        leakage = check_leakage(
            {q: queries[q] for q in pairs},
            {name: read_queries(str(path)) for name, path in test_queries.items()},
        )
    run = read_run_dict(run_path)
    corpus = None
    if corpus_parquet:
        corpus = _check_corpus(str(corpus_parquet), pairs, run, params.positives_without_text)
    stats = _new_stats(params)
    meta = {"artifact": "hard-negatives", "params": asdict(params)}
    with ParquetSink(out_parquet, NEGATIVES_SCHEMA, meta) as sink:
        for table in _tables(iter_negatives(pairs, qrels, run, params, stats, str(run_path))):
            sink.write(table)
    stats["pairs"] = pairs.stats
    stats["leakage_check"] = leakage
    stats["corpus_check"] = corpus
    write_json_atomic(stats_json, stats)
    return stats
