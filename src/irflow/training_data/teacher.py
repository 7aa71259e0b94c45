"""Teacher scoring of mined samples, sharded, streamed, and merged back in order.

A teacher scores every (query, positive) and (query, negative) pair of a ``negatives.parquet``
(:mod:`.negatives`). Three kinds, each with its score kind (recorded in the Parquet metadata and
the stats):

===============  ======================  ===================================================
kind             score kind              what
===============  ======================  ===================================================
bi-encoder       ``cosine``              cosine of L2-normalised ``SentenceTransformer``
                                         embeddings (``encode_query``/``encode_document``,
                                         so a model's own prompts apply; overridable)
cross-encoder    ``logit``               ``CrossEncoder`` raw output (activation Identity);
                                         one-label models only
causal-lm        ``yes_minus_no_logit``  ``logit(yes) - logit(no)`` of the next token after an
                                         instruction template, ``AutoModelForCausalLM``
===============  ======================  ===================================================

Scores equal the plain library calls to float32 rounding, well within 1e-4:
``SentenceTransformer.encode_query``/``encode_document`` with ``normalize_embeddings=True``
and a dot product (both are ``encode`` for a model without prompts),
``CrossEncoder.predict(activation_fn=Identity())``, and an unpadded forward pass of the causal
LM. The model calls are the library's own; only *what goes into a batch* changes.

**Speed** (what differs from the library default): within a chunk of samples, texts are
deduplicated (a bi-encoder embeds each query and each document once, however many pairs use
it; the pair kinds score each distinct pair once), sorted by token length and cut into batches
by a *token budget* (``batch_tokens`` padded tokens, at most ``max_batch`` rows) instead of a
fixed count, so short inputs go in large batches and long ones in small batches; everything runs
under ``torch.inference_mode()``. The batching (and its defaults) lives in
:mod:`irflow.batching`, shared with the encoding and reranking of :mod:`irflow.dense` and
:mod:`irflow.cross_encoder`. On GPU the models load in bf16 with SDPA attention
(:func:`irflow.models.model_kwargs`).

**Memory** is bounded by one chunk: the shard's sample ids (Arrow), the Arrow text of the
documents the shard needs (read once from the corpus Parquet, filtered by id; at most the
corpus), the query texts, and the Python strings and embeddings of one chunk
(``chunk_samples`` samples), plus activations bounded by ``batch_tokens``. It does not grow
with the number of pairs scored: freed heap memory is handed back after every chunk (glibc
``malloc_trim``), without which heap fragmentation makes the resident size creep.

**Sharding.** Samples are grouped into chunks of ``chunk_samples`` consecutive rows of the
samples file; shard ``i`` of ``n`` scores the contiguous run of chunks ``[i*C//n, (i+1)*C//n)``
(``C`` chunks in all; :func:`shard_rows`). Contiguous blocks rather than ``row % n``: a shard's
samples share queries (dedupe works), the shard reads a contiguous row range, and because a
chunk is scored identically whichever shard holds it, merged shards are *bit-identical* to an
unsharded run with the same chunk size and batch settings. Shard sizes differ by at most one
chunk; a shard may be empty when there are fewer chunks than shards.

Schema of a scores file (:data:`SCORES_SCHEMA`; shard, merged and filtered files alike), rows in
the samples file's order:

============  ==============  ==========================================================
column        type            meaning
============  ==============  ==========================================================
query_id      string          training query
pos_id        string          positive document
pos_score     float32         teacher score of (query, positive)
neg_ids       list<string>    negatives, as in the samples file
neg_scores    list<float32>   teacher scores of (query, negative), aligned with neg_ids
============  ==============  ==========================================================

The ``irflow`` schema metadata holds ``artifact`` (``teacher-scores-shard`` or
``teacher-scores``), ``teacher`` (the spec: kind, model reference, prompts/template),
``score_kind``, ``samples`` (sha256 and row count of the samples file), ``scoring``
(``chunk_samples``, ``batch_tokens``, ``max_batch``) and, for a shard, ``shard``
(``index``, ``count``, ``row_start``, ``row_stop``). :func:`merge_shards` checks all of these.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from irflow.batching import (
    Counters,
    shard_rows,  # noqa: F401 (re-exported)
)
from irflow.io import InputError, open_parquet, sha256_file, write_json_atomic
from irflow.logs import Progress
from irflow.training_data.artifacts import (  # noqa: F401 (the scores contract, re-exported)
    SCORE_KINDS,
    SCORES_SCHEMA,
    ParquetSink,
    check_columns,
    check_finite_scores,
    read_meta,
)
from irflow.training_data.pairs import SHOW
from irflow.training_data.teachers import (  # noqa: F401 (the teachers, re-exported)
    DEFAULT_TEMPLATE,
    BiEncoderTeacher,
    CausalLMTeacher,
    CrossEncoderTeacher,
    Teacher,
    TeacherSpec,
    _load_causal_lm,
    causal_lm_teacher,
    load_teacher,
)

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SAMPLES = 256


# ---------------------------------------------------------------------------------------------
# Sharded scoring
# ---------------------------------------------------------------------------------------------
def _read_rows(path: str, start: int, stop: int, columns: list[str]) -> pa.Table:
    """Rows ``[start, stop)`` of a Parquet file, reading only the row groups that hold them."""
    parquet = pq.ParquetFile(path)
    parts = []
    offset = 0
    for group in range(parquet.num_row_groups):
        rows = parquet.metadata.row_group(group).num_rows
        if offset < stop and offset + rows > start:
            table = parquet.read_row_group(group, columns=columns)
            first, last = max(start, offset), min(stop, offset + rows)
            parts.append(table.slice(first - offset, last - first))
        offset += rows
    if not parts:
        return parquet.schema_arrow.empty_table().select(columns)
    return pa.concat_tables(parts)


class CorpusTexts:
    """The texts of a set of documents, read once from the corpus Parquet and kept as Arrow."""

    def __init__(self, corpus_parquet: str, needed: pa.Array, batch: int = 65_536):
        needed = pc.unique(needed)
        parts = []
        parquet = open_parquet(corpus_parquet)
        for record_batch in parquet.iter_batches(
            batch_size=batch, columns=["doc_id", "title", "text"]
        ):
            keep = pc.is_in(record_batch.column("doc_id"), value_set=needed)
            if pc.any(keep).as_py():
                parts.append(pa.Table.from_batches([record_batch.filter(keep)]))
        self.table = (
            pa.concat_tables(parts).combine_chunks()
            if parts
            else parquet.schema_arrow.empty_table().select(["doc_id", "title", "text"])
        )
        self.row = {d: i for i, d in enumerate(self.table.column("doc_id").to_pylist())}
        self.missing = sorted(set(needed.to_pylist()) - set(self.row))

    def texts(self, doc_ids: list[str]) -> dict[str, str]:
        from irflow.data import doc_texts

        unique = list(dict.fromkeys(doc_ids))
        rows = self.table.take(pa.array([self.row[d] for d in unique], type=pa.int64()))
        return dict(zip(unique, doc_texts(rows), strict=True))


def _missing_docs_error(samples: pa.Table, missing: list[str], corpus_parquet: str) -> InputError:
    missing_set = set(missing)
    found: list[str] = []
    for qid, pos, negs in zip(
        samples.column("query_id").to_pylist(),
        samples.column("pos_id").to_pylist(),
        samples.column("neg_ids").to_pylist(),
        strict=True,
    ):
        if pos in missing_set:
            found.append(f"positive {pos!r} of query {qid!r}")
        found.extend(
            f"negative {d!r} of sample ({qid!r}, {pos!r})" for d in negs if d in missing_set
        )
        if len(found) >= SHOW:
            break
    return InputError(
        f"{len(missing)} documents of the samples are not in the corpus {corpus_parquet}: "
        + "; ".join(found[:SHOW])
    )


def score_shard(
    samples_parquet: str | os.PathLike,
    shard_index: int,
    num_shards: int,
    teacher: Teacher | TeacherSpec,
    corpus_parquet: str | os.PathLike,
    queries_parquet: str | os.PathLike,
    out_parquet: str | os.PathLike,
    stats_json: str | os.PathLike | None = None,
    chunk_samples: int = DEFAULT_CHUNK_SAMPLES,
    device: str | None = None,
) -> dict[str, Any]:
    """Score shard ``shard_index`` of ``num_shards`` of a samples file into a shard Parquet.

    ``samples_parquet`` is a ``negatives.parquet`` (only ``query_id``, ``pos_id`` and
    ``neg_ids`` are read). ``teacher`` is a loaded :class:`Teacher`, or a :class:`TeacherSpec`
    that is loaded (on ``device``) only after the inputs have been checked. Every query of the
    shard must have text and every document must be in the corpus (:class:`InputError` naming
    the first offending samples otherwise); nothing is written on error. Returns the stats
    (also written to ``stats_json``).
    """
    samples_parquet, corpus_parquet = str(samples_parquet), str(corpus_parquet)
    from irflow.data import read_queries

    total = open_parquet(samples_parquet).metadata.num_rows
    start, stop = shard_rows(total, shard_index, num_shards, chunk_samples)
    samples = _read_rows(samples_parquet, start, stop, ["query_id", "pos_id", "neg_ids"])
    queries = read_queries(str(queries_parquet))
    absent = sorted(set(samples.column("query_id").to_pylist()) - set(queries))
    if absent:
        raise InputError(
            f"{len(absent)} queries of {samples_parquet} have no text in {queries_parquet}: "
            f"{absent[:SHOW]}"
        )
    needed = pa.concat_arrays(
        [
            samples.column("pos_id").combine_chunks(),
            pc.list_flatten(samples.column("neg_ids")).combine_chunks(),
        ]
    )
    corpus = CorpusTexts(corpus_parquet, needed)
    if corpus.missing:
        raise _missing_docs_error(samples, corpus.missing, corpus_parquet)
    if isinstance(teacher, TeacherSpec):
        teacher = load_teacher(teacher, device)
    teacher.counters = Counters()
    meta = {
        "artifact": "teacher-scores-shard",
        "teacher": teacher.spec.describe(),
        "score_kind": teacher.score_kind,
        "samples": {"sha256": sha256_file(samples_parquet), "rows": total},
        "scoring": {"chunk_samples": chunk_samples, **teacher.scoring()},
        "shard": {"index": shard_index, "count": num_shards, "row_start": start, "row_stop": stop},
    }
    began = time.perf_counter()
    progress = Progress(
        f"teacher {teacher.spec.name}, shard {shard_index}/{num_shards}",
        samples.num_rows,
        unit="samples",
        logger=log,
    )
    with ParquetSink(out_parquet, SCORES_SCHEMA, meta) as sink:
        for offset in range(0, samples.num_rows, chunk_samples):
            chunk = samples.slice(offset, chunk_samples)
            sink.write(_score_chunk(teacher, chunk, queries, corpus, start + offset))
            _release_free_memory()
            elapsed = time.perf_counter() - began
            pairs_rate = teacher.counters.pairs / elapsed if elapsed > 0 else 0.0
            progress.update(offset + chunk.num_rows, f"{pairs_rate:.1f} pairs/s")
    seconds = time.perf_counter() - began
    counts = teacher.counters.as_dict()
    log.info(
        "teacher %s, shard %d/%d: %d samples, %d pairs in %.1f s (%.1f pairs/s)",
        teacher.spec.name,
        shard_index,
        num_shards,
        samples.num_rows,
        counts["pairs"],
        seconds,
        counts["pairs"] / seconds if seconds else 0.0,
    )
    stats = {
        "teacher": teacher.spec.name,
        "score_kind": teacher.score_kind,
        "shard": meta["shard"],
        "samples": samples.num_rows,
        **counts,
    }
    if stats_json is not None:
        write_json_atomic(stats_json, stats)
    return stats


def _release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Batches of varying shapes fragment glibc's heap, so without this the resident size creeps
    up chunk after chunk although nothing is kept; with it, it stays flat.
    """
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            import ctypes

            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM: Any = None


def _score_chunk(
    teacher: Teacher, chunk: pa.Table, queries: dict[str, str], corpus: CorpusTexts, first: int
) -> pa.Table:
    qids = chunk.column("query_id").to_pylist()
    pos_ids = chunk.column("pos_id").to_pylist()
    neg_ids = chunk.column("neg_ids").to_pylist()
    texts = corpus.texts(pos_ids + [d for negs in neg_ids for d in negs])
    pair_q: list[str] = []
    pair_d: list[str] = []
    for qid, pos, negs in zip(qids, pos_ids, neg_ids, strict=True):
        for doc in (pos, *negs):
            pair_q.append(queries[qid])
            pair_d.append(texts[doc])
    scores = teacher.score(pair_q, pair_d)
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        # Find the sample of the first bad pair for the message.
        sizes = np.cumsum([1 + len(n) for n in neg_ids])
        row = int(np.searchsorted(sizes, bad[0], side="right"))
        raise InputError(
            f"teacher {teacher.spec.name!r} gave {bad.size} non-finite scores, first for sample "
            f"#{first + row} (query {qids[row]!r}, positive {pos_ids[row]!r})"
        )
    pos_scores, neg_scores, at = [], [], 0
    for negs in neg_ids:
        pos_scores.append(scores[at])
        neg_scores.append(scores[at + 1 : at + 1 + len(negs)])
        at += 1 + len(negs)
    offsets = np.cumsum([0] + [len(n) for n in neg_ids], dtype=np.int32)
    flat = np.concatenate(neg_scores) if neg_scores else np.zeros(0, np.float32)
    return pa.table(
        {
            "query_id": chunk.column("query_id"),
            "pos_id": chunk.column("pos_id"),
            "pos_score": pa.array(np.asarray(pos_scores, dtype=np.float32)),
            "neg_ids": chunk.column("neg_ids"),
            "neg_scores": pa.ListArray.from_arrays(
                pa.array(offsets), pa.array(flat.astype(np.float32))
            ),
        },
        schema=SCORES_SCHEMA,
    )


_SHARED_KEYS = ("teacher", "score_kind", "samples", "scoring")


def merge_shards(
    paths: Sequence[str | os.PathLike],
    out_parquet: str | os.PathLike,
    stats_json: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Reassemble shard files into one scores file in the samples file's row order.

    Refuses (:class:`InputError`, nothing written) shards of different teachers, score kinds,
    samples files, scoring settings or shard counts, a missing or duplicated shard index, and
    a shard whose rows do not match its recorded range. The merged file is byte-identical
    whatever the number of shards. Returns stats (also written to ``stats_json``): samples,
    pairs, and the distribution of teacher scores (for choosing a consistency margin).
    """
    if not paths:
        raise InputError("merge_shards: no shard files given")
    metas = [(str(p), read_meta(p, "teacher-scores-shard")) for p in paths]
    first_path, first = metas[0]
    for path, meta in metas:
        check_columns(path, SCORES_SCHEMA)
        for key in (*_SHARED_KEYS, "count"):
            mine = meta["shard"]["count"] if key == "count" else meta[key]
            theirs = first["shard"]["count"] if key == "count" else first[key]
            if mine != theirs:
                raise InputError(
                    f"{path}: shard {key} {mine!r} differs from {theirs!r} in {first_path}"
                )
    count = first["shard"]["count"]
    by_index: dict[int, str] = {}
    shard_of: dict[str, dict[str, Any]] = {}
    for path, meta in metas:
        index = meta["shard"]["index"]
        if index in by_index:
            raise InputError(f"shard {index} of {count} given twice: {by_index[index]} and {path}")
        by_index[index] = path
        shard_of[path] = meta["shard"]
    missing = sorted(set(range(count)) - set(by_index))
    if missing:
        raise InputError(f"shards {missing} of {count} are missing (got {sorted(by_index)})")
    expected_start = 0
    for index in range(count):
        path = by_index[index]
        shard = shard_of[path]
        rows = pq.ParquetFile(path).metadata.num_rows
        if shard["row_start"] != expected_start or rows != shard["row_stop"] - shard["row_start"]:
            raise InputError(
                f"{path}: shard {index} holds {rows} rows for range "
                f"[{shard['row_start']}, {shard['row_stop']}), expected to start at "
                f"{expected_start}"
            )
        expected_start = shard["row_stop"]
    if expected_start != first["samples"]["rows"]:
        raise InputError(f"shards cover {expected_start} of the {first['samples']['rows']} samples")
    meta = {"artifact": "teacher-scores", **{k: first[k] for k in _SHARED_KEYS}, "filters": []}
    summary = _ScoreSummary()
    with ParquetSink(out_parquet, SCORES_SCHEMA, meta) as sink:
        for index in range(count):
            row = 0
            for batch in pq.ParquetFile(by_index[index]).iter_batches(batch_size=8192):
                table = pa.Table.from_batches([batch])
                check_finite_scores(table, by_index[index], row)
                row += table.num_rows
                summary.add(table)
                sink.write(table)
    stats = {
        "teacher": first["teacher"]["name"],
        "score_kind": first["score_kind"],
        "shards": count,
        **summary.as_dict(),
    }
    if stats_json is not None:
        write_json_atomic(stats_json, stats)
    return stats


class _ScoreSummary:
    """Samples, pairs and score quantiles (from a bounded reservoir) of a scores file."""

    def __init__(self, keep: int = 100_000):
        self.samples = self.negatives = self.at_or_above_pos = 0
        self.keep = keep
        self.pos: list[np.ndarray] = []
        self.neg: list[np.ndarray] = []

    def add(self, table: pa.Table) -> None:
        pos = table.column("pos_score").to_numpy()
        lists = table.column("neg_scores").combine_chunks()
        neg = lists.flatten().to_numpy()
        lengths = pc.list_value_length(lists).to_numpy()
        self.samples += table.num_rows
        self.negatives += neg.size
        self.at_or_above_pos += int((neg >= np.repeat(pos, lengths)).sum())
        if sum(a.size for a in self.pos) < self.keep:
            self.pos.append(pos)
        if sum(a.size for a in self.neg) < self.keep:
            self.neg.append(neg)

    def as_dict(self) -> dict[str, Any]:
        def quantiles(parts):
            values = np.concatenate(parts) if parts else np.zeros(0)
            if not values.size:
                return None
            qs = np.quantile(values.astype(np.float64), [0.0, 0.25, 0.5, 0.75, 1.0])
            return dict(zip(["min", "q25", "median", "q75", "max"], map(float, qs), strict=True))

        return {
            "samples": self.samples,
            "negatives": self.negatives,
            "pairs": self.samples + self.negatives,
            "negatives_at_or_above_positive": self.at_or_above_pos,
            "pos_score_quantiles": quantiles(self.pos),
            "neg_score_quantiles": quantiles(self.neg),
        }


def score_samples(
    samples_parquet: str | os.PathLike,
    teacher: Teacher | TeacherSpec,
    corpus_parquet: str | os.PathLike,
    queries_parquet: str | os.PathLike,
    out_parquet: str | os.PathLike,
    stats_json: str | os.PathLike | None = None,
    chunk_samples: int = DEFAULT_CHUNK_SAMPLES,
    device: str | None = None,
) -> dict[str, Any]:
    """Unsharded scoring: one shard (0 of 1), merged into ``out_parquet``."""
    out = Path(out_parquet)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        shard = Path(tmp) / "shard-0-of-1.parquet"
        score_shard(
            samples_parquet,
            0,
            1,
            teacher,
            corpus_parquet,
            queries_parquet,
            shard,
            chunk_samples=chunk_samples,
            device=device,
        )
        stats = merge_shards([shard], out, stats_json)
        with contextlib.suppress(FileNotFoundError):
            shard.unlink()
    return stats
