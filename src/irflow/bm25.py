"""BM25 first stage with bm25s (sparse-matrix BM25 in NumPy; no JVM, exact top-k).

Defaults follow pyserini's BEIR "flat" baselines: Lucene's BM25 variant, k1=0.9, b=0.4,
title and body indexed together, English stop words and the Snowball English stemmer
(PyStemmer). pyserini's Lucene analyzer uses Porter's stemmer, so scores differ slightly.

**Indexing streams the corpus** (:func:`build_index`): the corpus Parquet is read in record
batches of ``batch_docs`` documents; each batch is tokenised with ``bm25s.tokenize`` (the same
analyzer as the queries) and reduced at once to NumPy arrays: for every document its length and
its distinct terms with their frequencies (int32 term ids into one growing vocabulary, tf in the
smallest unsigned type that holds it). No Python list of token ids outlives its batch. Once all
batches are read the document frequencies and the average length are known; each batch's BM25
weights are then computed with bm25s's own tf and idf functions and scattered straight into the
final CSC arrays (counting sort by term, documents ascending within a term), the batch's arrays
being freed as it goes. Peak memory is therefore about the final index (8 bytes a posting) plus
the batches' compact postings (5 to 8 bytes a posting), the vocabulary dict and one batch.
The index files are byte-identical to those of bm25s's in-memory ``BM25.index`` on the same
tokens (:func:`build_index_reference`, kept for the tests and the benchmark): same vocabulary
(sorted), same float32 weights, same order.

**Retrieval can be sharded by query** (:func:`retrieve_shard`, :func:`merge_runs`): shard ``i``
of ``n`` takes the contiguous block ``[i*Q//n, (i+1)*Q//n)`` of the sorted query ids (the split
of teacher scoring, :func:`irflow.training_data.teacher.shard_rows` with one query a chunk).
Each query is scored independently, and a run file lists its queries in sorted order, so the
shards' run files concatenated in shard order are byte-identical to the run file of one job.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from irflow.data import doc_texts, read_corpus
from irflow.io import InputError, atomic_output, open_parquet, write_json_atomic

log = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "k1": 0.9,
    "b": 0.4,
    "method": "lucene",
    "stemmer": "english",
    "stopwords": "en",
}

# Documents per streamed record batch: bounds the Python objects alive at once (the batch's
# texts and bm25s's token lists), not the index. Does not change the index.
BATCH_DOCS = 50_000
# Postings scored and scattered into the CSC arrays at once (bounds the float64 temporaries).
SLICE_POSTINGS = 1 << 20


def _tokenize(texts: list[str], params: dict[str, Any]):
    import bm25s
    import Stemmer

    stemmer = Stemmer.Stemmer(params["stemmer"]) if params.get("stemmer") else None
    return bm25s.tokenize(
        texts, stopwords=params.get("stopwords"), stemmer=stemmer, show_progress=False
    )


# --------------------------------------------------------------------------------------------
# Streaming index
# --------------------------------------------------------------------------------------------
class _Batch(NamedTuple):
    """One record batch's postings, documents in corpus order, terms ascending within one."""

    doc_start: int  # corpus row of the batch's first document
    doc_lengths: np.ndarray  # int32, tokens per document (stop words removed)
    doc_terms: np.ndarray  # int32, distinct terms per document
    terms: np.ndarray  # int32, vocabulary id (first-seen numbering) of each posting
    tf: np.ndarray  # unsigned int, term frequency of each posting


class _Vocabulary:
    """Terms numbered in first-seen order across batches (renumbered sorted at the end)."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def global_ids(self, local_vocab: dict[str, int]) -> np.ndarray:
        """Map a batch's bm25s vocabulary (term -> local id) to global ids, by local id."""
        ids = self.ids
        mapping = np.empty(len(local_vocab), dtype=np.int32)
        for term, local in local_vocab.items():
            gid = ids.get(term)
            if gid is None:
                gid = ids[term] = len(ids)
            mapping[local] = gid
        return mapping

    def sorted_renumbering(self) -> tuple[list[str], np.ndarray]:
        """The terms in sorted order and, by first-seen id, each term's sorted id."""
        words = sorted(self.ids)
        remap = np.empty(len(words), dtype=np.int32)
        remap[np.fromiter((self.ids[w] for w in words), dtype=np.int64, count=len(words))] = (
            np.arange(len(words), dtype=np.int32)
        )
        return words, remap


def _batch_postings(texts: list[str], params: dict[str, Any], vocab: _Vocabulary, start: int):
    tokens = _tokenize(texts, params)
    lengths = np.fromiter(map(len, tokens.ids), dtype=np.int64, count=len(tokens.ids))
    total = int(lengths.sum())
    local = np.fromiter(itertools.chain.from_iterable(tokens.ids), dtype=np.int32, count=total)
    terms = vocab.global_ids(tokens.vocab)[local].astype(np.int64)
    del tokens, local
    docs = np.repeat(np.arange(len(texts), dtype=np.int64), lengths)
    keys, tf = np.unique((docs << 32) | terms, return_counts=True)
    del docs, terms
    doc_terms = np.bincount(keys >> 32, minlength=len(texts)).astype(np.int32)
    return _Batch(
        doc_start=start,
        doc_lengths=lengths.astype(np.int32),
        doc_terms=doc_terms,
        terms=(keys & 0xFFFFFFFF).astype(np.int32),
        tf=tf.astype(np.min_scalar_type(int(tf.max(initial=0)))),
    )


def _per_df(fn, df: np.ndarray, dtype) -> np.ndarray:
    """``fn(df)`` for every term, computed once per distinct document frequency with bm25s's
    own (Python float) functions, cast to ``dtype`` as bm25s does."""
    values, inverse = np.unique(df, return_inverse=True)
    return np.array([fn(int(v)) for v in values], dtype=dtype)[inverse]


def _bm25_csc(batches: list[_Batch], remap: np.ndarray, retriever) -> dict[str, Any]:
    """The CSC score matrix (documents x terms) that bm25s's ``build_index_from_ids`` makes,
    from the batches' postings; empties ``batches`` as it goes."""
    from bm25s.scoring import _select_idf_scorer, _select_tfc_scorer

    n_vocab = len(remap)
    n_docs = sum(len(b.doc_lengths) for b in batches)
    # bm25s: np.array([len(doc) ...]).mean(); an integer sum in float64 is exact, so the order of
    # summation cannot change it.
    avg_doc_len = np.float64(sum(int(b.doc_lengths.sum(dtype=np.int64)) for b in batches)) / n_docs
    df = np.zeros(n_vocab, dtype=np.int64)
    for b in batches:
        df += np.bincount(remap[b.terms], minlength=n_vocab)
    k1, b_, delta, dtype = retriever.k1, retriever.b, retriever.delta, retriever.dtype
    idf_fn = _select_idf_scorer(retriever.idf_method)
    tfc_fn = _select_tfc_scorer(retriever.method)
    idf = _per_df(lambda d: idf_fn(d, N=n_docs), df, dtype)
    nonoccurrence = None
    if retriever.method in retriever.methods_requiring_nonoccurrence:
        tfc0 = tfc_fn(tf_array=0, l_d=avg_doc_len, l_avg=avg_doc_len, k1=k1, b=b_, delta=delta)
        nonoccurrence = _per_df(lambda d: idf_fn(d, N=n_docs) * tfc0, df, dtype)
    retriever.nonoccurrence_array = nonoccurrence

    indptr = np.zeros(n_vocab + 1, dtype=np.int64)
    np.cumsum(df, out=indptr[1:])
    del df
    nnz = int(indptr[-1])
    data = np.empty(nnz, dtype=dtype)
    indices = np.empty(nnz, dtype=retriever.int_dtype)
    heads = indptr[:-1].copy()
    while batches:
        batch = batches.pop(0)
        rows = np.repeat(
            np.arange(batch.doc_start, batch.doc_start + len(batch.doc_lengths), dtype=np.int32),
            batch.doc_terms,
        )
        lengths = np.repeat(batch.doc_lengths, batch.doc_terms)
        for lo in range(0, len(rows), SLICE_POSTINGS):
            hi = lo + SLICE_POSTINGS
            terms = remap[batch.terms[lo:hi]]
            # The expressions bm25s evaluates document by document, on many postings at once.
            tfc = tfc_fn(
                tf_array=batch.tf[lo:hi].astype(dtype),
                l_d=lengths[lo:hi],
                l_avg=avg_doc_len,
                k1=k1,
                b=b_,
                delta=delta,
            )
            scores = idf[terms] * tfc
            del tfc
            if nonoccurrence is not None:
                scores -= nonoccurrence[terms]
            # Counting sort by term; a term's postings keep their (ascending) document order.
            order = np.argsort(terms, kind="stable")
            terms = terms[order]
            first = np.ones(len(order), dtype=bool)
            first[1:] = terms[1:] != terms[:-1]
            starts = np.flatnonzero(first)
            del first
            counts = np.diff(np.append(starts, len(order)))
            # position of the j-th posting of term t in this slice: heads[t] + j
            position = np.repeat(heads[terms[starts]] - starts, counts)
            position += np.arange(len(order))
            data[position] = scores[order]
            indices[position] = rows[lo:hi][order]
            heads[terms[starts]] += counts
            del terms, scores, order, starts, counts, position
        del batch, rows, lengths
    return {"data": data, "indices": indices, "indptr": indptr, "num_docs": n_docs}


def _write_doc_ids(path: Path, chunks: list) -> None:
    """``doc_ids.json`` as :func:`irflow.io.write_json_atomic` writes a list, streamed."""
    with open(path, "w", encoding="utf-8") as out:
        first = True
        for chunk in chunks:
            for doc_id in chunk.to_pylist():
                out.write(("[\n  " if first else ",\n  ") + json.dumps(doc_id, ensure_ascii=False))
                first = False
        out.write("[]\n" if first else "\n]\n")


def build_index(
    corpus_parquet: str, out_dir: str, params: dict[str, Any], batch_docs: int = BATCH_DOCS
) -> None:
    """Index a corpus Parquet (``doc_id``, ``title``, ``text``) with bm25s into ``out_dir``:
    ``bm25s/`` (bm25s's saved index), ``doc_ids.json`` (row order) and ``params.json``.

    Streams the corpus in record batches of ``batch_docs`` documents (see the module
    docstring); ``batch_docs`` changes memory, never the index.
    """
    import bm25s
    import pyarrow as pa

    params = {**DEFAULTS, **params}
    started = time.perf_counter()
    retriever = bm25s.BM25(k1=params["k1"], b=params["b"], method=params["method"])
    vocab = _Vocabulary()
    batches: list[_Batch] = []
    doc_ids: list[pa.Array] = []
    n_docs = 0
    parquet = open_parquet(corpus_parquet)
    for record_batch in parquet.iter_batches(
        batch_size=batch_docs, columns=["doc_id", "title", "text"]
    ):
        table = pa.Table.from_batches([record_batch])
        batches.append(_batch_postings(doc_texts(table), params, vocab, n_docs))
        doc_ids.append(table.column("doc_id"))
        n_docs += table.num_rows
        del table, record_batch
    if n_docs == 0:
        raise InputError(f"{corpus_parquet}: the corpus is empty")
    if not vocab.ids:
        raise InputError(f"{corpus_parquet}: no document has an indexable term")
    postings = sum(len(b.terms) for b in batches)
    log.info(
        "tokenised %d documents in %d batches: %d terms, %d postings (%.1f s)",
        n_docs,
        len(batches),
        len(vocab.ids),
        postings,
        time.perf_counter() - started,
    )
    words, remap = vocab.sorted_renumbering()
    vocab.ids.clear()
    retriever.scores = _bm25_csc(batches, remap, retriever)
    del remap
    # bm25s.BM25.index adds the empty token after the corpus's terms.
    retriever.vocab_dict = {word: i for i, word in enumerate(words)}
    retriever.vocab_dict[""] = len(words)
    del words
    with atomic_output(out_dir, directory=True) as tmp:
        retriever.save(str(tmp / "bm25s"), show_progress=False)
        _write_doc_ids(tmp / "doc_ids.json", doc_ids)
        write_json_atomic(tmp / "params.json", params)
    log.info("indexed %d documents in %.1f s", n_docs, time.perf_counter() - started)


# --------------------------------------------------------------------------------------------
# Reference: bm25s's in-memory indexing (the implementation build_index replaced)
# --------------------------------------------------------------------------------------------
def _sorted_vocabulary(tokens):
    """The same tokenization with the vocabulary numbered in sorted order.

    With a stemmer, bm25s numbers the stems in ``set`` order, which changes with Python's
    string hash seed from one process to the next; the index files would then differ on every
    run. Sorted numbering makes them byte-identical (scores are unaffected).
    """
    from bm25s.tokenization import Tokenized

    words = sorted(tokens.vocab)
    new_id = {word: i for i, word in enumerate(words)}
    remap = np.empty(len(words), dtype=np.int64)
    for word, old in tokens.vocab.items():
        remap[old] = new_id[word]
    ids = [remap[np.asarray(doc, dtype=np.int64)].tolist() for doc in tokens.ids]
    return Tokenized(ids=ids, vocab=new_id)


def build_index_reference(corpus_parquet: str, out_dir: str, params: dict[str, Any]) -> None:
    """The whole corpus tokenised at once and indexed by ``bm25s.BM25.index`` (token ids held
    as Python lists: about 4.7 GB a million passages). Kept to check :func:`build_index`
    against (same files, byte for byte) and to benchmark it; not used by the workflow."""
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


# --------------------------------------------------------------------------------------------
# Retrieval, whole or by query shard
# --------------------------------------------------------------------------------------------
def retrieve(
    index_dir: str, queries: dict[str, str], k: int, threads: int = 1
) -> dict[str, dict[str, float]]:
    """Top-``k`` documents (with a score above zero) of every query: {qid: {doc_id: score}}."""
    if not queries:
        raise InputError("no queries to retrieve for")
    return _retrieve(index_dir, queries, k, threads)


def _retrieve(
    index_dir: str, queries: dict[str, str], k: int, threads: int
) -> dict[str, dict[str, float]]:
    import bm25s

    index = Path(index_dir)
    params = json.loads((index / "params.json").read_text())
    retriever = bm25s.BM25.load(str(index / "bm25s"))
    doc_ids = json.loads((index / "doc_ids.json").read_text())
    qids = sorted(queries)
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


def query_shard(query_ids, shard_index: int, num_shards: int) -> list[str]:
    """The query ids of shard ``shard_index`` of ``num_shards``: the contiguous block
    ``[i*Q//n, (i+1)*Q//n)`` of the sorted ids (empty when there are more shards than queries).
    """
    from irflow.batching import shard_rows

    qids = sorted(query_ids)
    start, stop = shard_rows(len(qids), shard_index, num_shards, chunk_samples=1)
    return qids[start:stop]


def retrieve_shard(
    index_dir: str,
    queries: dict[str, str],
    k: int,
    shard_index: int,
    num_shards: int,
    threads: int = 1,
) -> dict[str, dict[str, float]]:
    """:func:`retrieve` for the queries of one shard (:func:`query_shard`); an empty shard
    gives an empty run (and loads no index). Every query is scored exactly as in one job."""
    if not queries:
        raise InputError("no queries to retrieve for")
    shard = query_shard(queries, shard_index, num_shards)
    if not shard:
        return {}
    return _retrieve(index_dir, {q: queries[q] for q in shard}, k, threads)


def merge_runs(shard_runs: list[str], out_run: str) -> None:
    """Concatenate shard run files, in shard order, into ``out_run`` (atomically).

    The shards must hold disjoint queries in ascending order across the files, as
    :func:`retrieve_shard` and :func:`irflow.io.write_trec_run` make them; then the result is
    byte-identical to the run file of one unsharded job. An :class:`InputError` names the first
    file and line that breaks the order (shards listed out of order, a query in two shards, a
    line that is not a TREC run line).
    """
    if not shard_runs:
        raise InputError(f"{out_run}: no shard run files to merge")
    last_qid: str | None = None
    with atomic_output(out_run) as tmp, open(tmp, "w", encoding="utf-8", newline="") as out:
        for path in shard_runs:
            current: str | None = None  # the query of this file's previous line
            with open(path, encoding="utf-8", newline="") as shard:
                for number, line in enumerate(shard, start=1):
                    cols = line.split(" ")
                    if len(cols) != 6 or not line.endswith("\n"):
                        raise InputError(f"{path}:{number}: not a 6-column TREC run line")
                    qid = cols[0]
                    if qid != current:
                        if last_qid is not None and qid <= last_qid:
                            raise InputError(
                                f"{path}:{number}: query {qid!r} after {last_qid!r}: the shards "
                                "must be given in order and hold disjoint queries"
                            )
                        current = last_qid = qid
                    out.write(line)
