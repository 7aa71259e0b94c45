"""Reranking a candidate run with any scorer.

Every reranker here is one of two shapes. A *pair scorer* (a cross-encoder, the decoder's yes/no
head) scores (query text, document text) pairs. An *embedder* (a bi-encoder, the decoder as
embedder) encodes the queries and each distinct candidate document once; a candidate's score is
the dot product, a cosine for the L2-normalised embeddings the callers pass. Both functions
return ``{query_id: {doc_id: score}}`` over each query's top-``depth`` candidates in trec_eval
order, ready for :func:`irflow.io.write_trec_run`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from irflow.data import candidate_texts
from irflow.io import InputError


def _top_candidates(corpus_parquet, queries, candidates, depth):
    missing = sorted(set(candidates) - set(queries))
    if missing:
        raise InputError(f"candidate run has queries with no text: {missing[:5]}")
    return candidate_texts(corpus_parquet, candidates, depth)


def rerank_by_pairs(
    corpus_parquet: str,
    queries: dict[str, str],
    candidates: dict[str, dict[str, float]],
    depth: int,
    score_pairs: Callable[[list[tuple[str, str]]], Sequence[float]],
) -> dict[str, dict[str, float]]:
    """Each query's top-``depth`` candidates scored by ``score_pairs`` (one call, all pairs)."""
    top, texts = _top_candidates(corpus_parquet, queries, candidates, depth)
    keys = [(qid, doc) for qid in sorted(top) for doc in top[qid]]
    scores = score_pairs([(queries[qid], texts[doc]) for qid, doc in keys])
    if len(scores) != len(keys):
        raise ValueError(f"scorer returned {len(scores)} scores for {len(keys)} pairs")
    run: dict[str, dict[str, float]] = {qid: {} for qid in sorted(top)}
    for (qid, doc), score in zip(keys, scores, strict=True):
        run[qid][doc] = float(score)
    return run


def rerank_by_embeddings(
    corpus_parquet: str,
    queries: dict[str, str],
    candidates: dict[str, dict[str, float]],
    depth: int,
    encode_queries: Callable[[list[str]], np.ndarray],
    encode_documents: Callable[[list[str]], np.ndarray],
) -> dict[str, dict[str, float]]:
    """Each query's top-``depth`` candidates scored by the dot product of their embeddings."""
    top, texts = _top_candidates(corpus_parquet, queries, candidates, depth)
    doc_ids = list(texts)
    doc_emb = encode_documents([texts[d] for d in doc_ids])
    row_of = {d: i for i, d in enumerate(doc_ids)}
    qids = sorted(top)
    query_emb = encode_queries([queries[q] for q in qids])
    run = {}
    for qi, qid in enumerate(qids):
        scores = doc_emb[[row_of[d] for d in top[qid]]] @ query_emb[qi]
        run[qid] = {d: float(s) for d, s in zip(top[qid], scores, strict=True)}
    return run
