"""BM25 first stage with bm25s (sparse-matrix BM25 in NumPy; no JVM, exact top-k).

Defaults follow pyserini's BEIR "flat" baselines: Lucene's BM25 variant, k1=0.9, b=0.4,
title and body indexed together, English stop words and the Snowball English stemmer
(PyStemmer). pyserini's Lucene analyzer uses Porter's stemmer, so scores differ slightly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from irflow.data import doc_texts, read_corpus
from irflow.io import InputError, atomic_output, write_json_atomic

DEFAULTS: dict[str, Any] = {
    "k1": 0.9,
    "b": 0.4,
    "method": "lucene",
    "stemmer": "english",
    "stopwords": "en",
}


def _tokenize(texts: list[str], params: dict[str, Any]):
    import bm25s
    import Stemmer

    stemmer = Stemmer.Stemmer(params["stemmer"]) if params.get("stemmer") else None
    return bm25s.tokenize(
        texts, stopwords=params.get("stopwords"), stemmer=stemmer, show_progress=False
    )


def _sorted_vocabulary(tokens):
    """The same tokenization with the vocabulary numbered in sorted order.

    With a stemmer, bm25s numbers the stems in ``set`` order, which changes with Python's
    string hash seed from one process to the next; the index files would then differ on every
    run. Sorted numbering makes them byte-identical (scores are unaffected).
    """
    import numpy as np
    from bm25s.tokenization import Tokenized

    words = sorted(tokens.vocab)
    new_id = {word: i for i, word in enumerate(words)}
    remap = np.empty(len(words), dtype=np.int64)
    for word, old in tokens.vocab.items():
        remap[old] = new_id[word]
    ids = [remap[np.asarray(doc, dtype=np.int64)].tolist() for doc in tokens.ids]
    return Tokenized(ids=ids, vocab=new_id)


def build_index(corpus_parquet: str, out_dir: str, params: dict[str, Any]) -> None:
    import bm25s

    params = {**DEFAULTS, **params}
    table = read_corpus(corpus_parquet)
    texts = doc_texts(table)
    retriever = bm25s.BM25(k1=params["k1"], b=params["b"], method=params["method"])
    retriever.index(_sorted_vocabulary(_tokenize(texts, params)), show_progress=False)
    with atomic_output(out_dir, directory=True) as tmp:
        retriever.save(str(tmp / "bm25s"), show_progress=False)
        write_json_atomic(tmp / "doc_ids.json", table.column("doc_id").to_pylist())
        write_json_atomic(tmp / "params.json", params)


def retrieve(
    index_dir: str, queries: dict[str, str], k: int, threads: int = 1
) -> dict[str, dict[str, float]]:
    import bm25s

    index = Path(index_dir)
    params = json.loads((index / "params.json").read_text())
    retriever = bm25s.BM25.load(str(index / "bm25s"))
    doc_ids = json.loads((index / "doc_ids.json").read_text())
    qids = sorted(queries)
    if not qids:
        raise InputError("no queries to retrieve for")
    k = min(k, len(doc_ids))
    tokens = _tokenize([queries[q] for q in qids], params)
    results, scores = retriever.retrieve(tokens, k=k, show_progress=False, n_threads=threads)
    run: dict[str, dict[str, float]] = {}
    for row, qid in enumerate(qids):
        # Documents with zero score matched no query term: they are not retrieved.
        run[qid] = {
            doc_ids[results[row, col]]: float(scores[row, col])
            for col in range(results.shape[1])
            if scores[row, col] > 0
        }
    return run
