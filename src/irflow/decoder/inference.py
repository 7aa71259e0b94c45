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

from irflow.decoder.model import DEFAULT_MAX_BATCH
from irflow.dense import load_embeddings, search_embeddings, write_corpus_embeddings
from irflow.reranking import rerank_by_embeddings, rerank_by_pairs


def encode_corpus(
    model,
    corpus_parquet: str,
    out_dir: str,
    batch_tokens: int | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    chunk: int = 20_000,
) -> None:
    """Embed every document (document template) into ``out_dir`` (atomic folder)."""
    write_corpus_embeddings(
        corpus_parquet,
        out_dir,
        lambda: model.lm_head.in_features,
        lambda texts: model.encode(texts, "document", batch_tokens, max_batch),
        chunk,
    )


def dense_retrieve(
    model,
    emb_dir: str,
    queries: dict[str, str],
    k: int,
    batch_tokens: int | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> dict[str, dict[str, float]]:
    """Exact top-``k`` cosine retrieval over :func:`encode_corpus`'s embeddings."""
    doc_emb, doc_ids = load_embeddings(emb_dir)  # a bad folder fails before any encoding
    qids = sorted(queries)
    query_emb = model.encode([queries[q] for q in qids], "query", batch_tokens, max_batch)
    return search_embeddings(emb_dir, doc_emb, doc_ids, qids, query_emb, k)


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
    return rerank_by_embeddings(
        corpus_parquet,
        queries,
        candidates,
        depth,
        lambda texts: model.encode(texts, "query", batch_tokens, max_batch),
        lambda texts: model.encode(texts, "document", batch_tokens, max_batch),
    )


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
    return rerank_by_pairs(
        corpus_parquet,
        queries,
        candidates,
        depth,
        lambda pairs: model.score(
            [query for query, _ in pairs], [doc for _, doc in pairs], batch_tokens, max_batch
        ),
    )
