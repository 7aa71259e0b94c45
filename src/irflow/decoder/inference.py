"""The unified decoder as dense retriever, cosine reranker and yes/no reranker.

Same inputs and outputs as :mod:`irflow.dense` and :mod:`irflow.cross_encoder`, so the existing
rules' shapes carry over: :func:`encode_corpus` writes ``embeddings.npy`` + ``doc_ids.json``
(read by :func:`irflow.dense.load_embeddings`), and the rerankers and :func:`dense_retrieve`
return ``{query_id: {doc_id: score}}`` for :func:`irflow.io.write_trec_run`. ``model`` is a
:class:`irflow.decoder.model.UnifiedModel` from :func:`irflow.decoder.checkpoint.load_unified`.

Inputs go through :mod:`irflow.batching`'s planner (each distinct input once, sorted by token
length, batches by a token budget; default :data:`irflow.batching.DEFAULT_BATCH_TOKENS` for the
device), so the scores are a pure function of the model and the texts: a reloaded model
reproduces its run file exactly on the same machine and device.
"""

from __future__ import annotations

import numpy as np

from irflow.data import candidate_texts, doc_texts
from irflow.decoder.model import DEFAULT_MAX_BATCH
from irflow.io import InputError, atomic_output, open_parquet, write_json_atomic


def encode_corpus(
    model,
    corpus_parquet: str,
    out_dir: str,
    batch_tokens: int | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    chunk: int = 20_000,
) -> None:
    """Embed every document (document template) into ``out_dir`` (atomic folder)."""
    parquet = open_parquet(corpus_parquet)
    total = parquet.metadata.num_rows
    dim = model.lm_head.in_features
    with atomic_output(out_dir, directory=True) as tmp:
        matrix = np.lib.format.open_memmap(
            tmp / "embeddings.npy", mode="w+", dtype=np.float32, shape=(total, dim)
        )
        doc_ids: list[str] = []
        offset = 0
        for batch in parquet.iter_batches(batch_size=chunk, columns=["doc_id", "title", "text"]):
            texts = doc_texts(batch)
            emb = model.encode(texts, "document", batch_tokens, max_batch)
            matrix[offset : offset + len(texts)] = emb
            doc_ids.extend(batch.column("doc_id").to_pylist())
            offset += len(texts)
        matrix.flush()
        del matrix
        write_json_atomic(tmp / "doc_ids.json", doc_ids)


def dense_retrieve(
    model,
    emb_dir: str,
    queries: dict[str, str],
    k: int,
    batch_tokens: int | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> dict[str, dict[str, float]]:
    """Exact top-``k`` cosine retrieval over :func:`encode_corpus`'s embeddings."""
    from irflow.dense import exact_search, load_embeddings

    doc_emb, doc_ids = load_embeddings(emb_dir)
    qids = sorted(queries)
    query_emb = model.encode([queries[q] for q in qids], "query", batch_tokens, max_batch)
    if query_emb.shape[1] != doc_emb.shape[1]:
        raise InputError(
            f"{emb_dir}: corpus embeddings have dimension {doc_emb.shape[1]}, the model gives "
            f"{query_emb.shape[1]}; encode the corpus with the same model"
        )
    scores, index = exact_search(query_emb, doc_emb, k)
    return {
        qid: {doc_ids[index[row, col]]: float(scores[row, col]) for col in range(index.shape[1])}
        for row, qid in enumerate(qids)
    }


def _check_queries(queries, candidates):
    missing = sorted(set(candidates) - set(queries))
    if missing:
        raise InputError(f"candidate run has queries with no text: {missing[:5]}")


def cosine_rerank(
    model,
    corpus_parquet: str,
    queries: dict[str, str],
    candidates: dict[str, dict[str, float]],
    depth: int,
    batch_tokens: int | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> dict[str, dict[str, float]]:
    """Score each query's top-``depth`` candidates by embedding cosine."""
    _check_queries(queries, candidates)
    top, texts = candidate_texts(corpus_parquet, candidates, depth)
    needed = list(texts)
    doc_emb = model.encode([texts[d] for d in needed], "document", batch_tokens, max_batch)
    row_of = {d: i for i, d in enumerate(needed)}
    qids = sorted(top)
    query_emb = model.encode([queries[q] for q in qids], "query", batch_tokens, max_batch)
    run = {}
    for qi, qid in enumerate(qids):
        scores = doc_emb[[row_of[d] for d in top[qid]]] @ query_emb[qi]
        run[qid] = {d: float(s) for d, s in zip(top[qid], scores, strict=True)}
    return run


def rerank(
    model,
    corpus_parquet: str,
    queries: dict[str, str],
    candidates: dict[str, dict[str, float]],
    depth: int,
    batch_tokens: int | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> dict[str, dict[str, float]]:
    """Score each query's top-``depth`` candidates by ``logit(yes) - logit(no)`` (or the MLP
    head of the ablation)."""
    _check_queries(queries, candidates)
    top, texts = candidate_texts(corpus_parquet, candidates, depth)
    qids = sorted(top)
    pairs = [(qid, d) for qid in qids for d in top[qid]]
    scores = model.score(
        [queries[q] for q, _ in pairs],
        [texts[d] for _, d in pairs],
        batch_tokens,
        max_batch,
    )
    run: dict[str, dict[str, float]] = {qid: {} for qid in qids}
    for (qid, doc), score in zip(pairs, scores, strict=True):
        run[qid][doc] = float(score)
    return run
