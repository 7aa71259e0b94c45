"""Bi-encoder paths (irflow.dense), cross-encoder reranking (irflow.cross_encoder) and their
shared batching (irflow.batching).

The embeddings must equal the plain library call, ``SentenceTransformer.encode(texts,
normalize_embeddings=True)``, within 1e-5 whatever the batching, and run files must rank as the
library's embeddings rank. Fast: a tiny random BERT bi-encoder (from test_training_data's
fixture); the test marked ``models`` checks the real MiniLM on a few DL19 passages.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_training_data import WORDS, tiny_models  # noqa: F401  (session fixture)
from workflow_helpers import require_data, require_models

from irflow.batching import Counters, encode_texts, plan_batches, token_lengths, unique
from irflow.data import CORPUS_SCHEMA, doc_texts
from irflow.dense import (
    dense_retrieve,
    encode_corpus,
    exact_search,
    load_embeddings,
    rerank_candidates,
    truncate_dim,
)
from irflow.io import InputError, ranked

REPO = Path(__file__).resolve().parents[1]
ATOL = 1e-5


@pytest.fixture(scope="module")
def bi_encoder(tiny_models):  # noqa: F811
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(1)
    return SentenceTransformer(str(tiny_models["bi-encoder"]), device="cpu")


def library(model, texts, prompt=None) -> np.ndarray:
    return model.encode(texts, normalize_embeddings=True, prompt=prompt, show_progress_bar=False)


def random_texts(n: int, seed: int = 0, longest: int = 80) -> list[str]:
    """Texts of 1 to ``longest`` words (the tiny model truncates at 48 tokens)."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(1, longest))) for _ in range(n)]


def assert_same_ranking(run: dict[str, float], expected: dict[str, float], k: int) -> None:
    """``run`` holds the top ``k`` of ``expected`` (library scores) with equal scores, ranked
    as they rank; documents whose scores differ by less than the tolerance may swap (ties)."""
    assert len(run) == min(k, len(expected))
    for doc, score in run.items():
        assert abs(score - expected[doc]) <= ATOL, doc
    order = [d for d, _ in ranked(run)]
    for higher, lower in zip(order, order[1:], strict=False):
        assert expected[higher] >= expected[lower] - 2 * ATOL, (higher, lower)
    left_out = [s for d, s in expected.items() if d not in run]
    if left_out:
        assert min(expected[d] for d in run) >= max(left_out) - 2 * ATOL


def corpus_file(path: Path, n: int = 40, seed: int = 0) -> Path:
    texts = random_texts(n, seed)
    table = pa.table(
        {
            "doc_id": [f"d{i}" for i in range(n)],
            "title": ["" if i % 4 else "cat dog" for i in range(n)],
            "text": texts,
        },
        schema=CORPUS_SCHEMA,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


# ---------------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------------
def test_unique_keeps_first_seen_order():
    items, index = unique(["b", "a", "b", "c", "a"])
    assert items == ["b", "a", "c"]
    assert index.tolist() == [0, 1, 0, 2, 1]


def test_plan_batches_longest_first_ties_in_input_order():
    # lengths 5, 9, 5, 2 -> order 1 (9), 0 (5), 2 (5), 3 (2); budget 12: 9 alone (12 // 9 = 1),
    # then the 5s (12 // 5 = 2), then the 2.
    assert plan_batches([5, 9, 5, 2], batch_tokens=12, max_batch=8) == [[1], [0, 2], [3]]
    assert plan_batches([1, 1, 1], batch_tokens=100, max_batch=2) == [[0, 1], [2]]
    assert plan_batches([], batch_tokens=100, max_batch=2) == []


@pytest.mark.parametrize("batch_tokens", [1, 40, 200, 100_000])
def test_encode_texts_equals_the_library_call(bi_encoder, batch_tokens):
    texts = random_texts(30) + ["cat", "cat", "", "the dog " * 60]
    counters = Counters()
    ours = encode_texts(bi_encoder, texts, batch_tokens=batch_tokens, counters=counters)
    assert ours.dtype == np.float32 and ours.shape == (len(texts), 32)
    np.testing.assert_allclose(ours, library(bi_encoder, texts), atol=ATOL, rtol=0)
    # Each distinct text once; the padded tokens of a batch never exceed the budget unless one
    # text alone is longer.
    assert counters.model_inputs == len(set(texts))
    lengths = token_lengths(bi_encoder, unique(texts)[0])
    assert counters.tokens == sum(lengths)
    assert counters.padded_tokens <= max(batch_tokens, max(lengths)) * counters.batches
    if batch_tokens == 1:
        assert counters.batches == len(set(texts))
    if batch_tokens == 100_000:
        assert counters.batches == 1


def test_encode_texts_prompts_and_roles(bi_encoder):
    texts = random_texts(9, seed=1)
    np.testing.assert_allclose(
        encode_texts(bi_encoder, texts, prompt="query: ", batch_tokens=30),
        library(bi_encoder, texts, prompt="query: "),
        atol=ATOL,
        rtol=0,
    )
    for role, encode in (
        ("query", bi_encoder.encode_query),
        ("document", bi_encoder.encode_document),
    ):
        expected = encode(texts, normalize_embeddings=True, show_progress_bar=False)
        got = encode_texts(bi_encoder, texts, role=role, batch_tokens=30)
        np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="role"):
        encode_texts(bi_encoder, texts, role="passage")
    assert encode_texts(bi_encoder, []).shape == (0, 32)


def test_lengths_count_the_prompt_and_truncate(bi_encoder):
    # "[CLS] cat [SEP]" = 3 tokens; a prompt of two words adds 2; max_seq_length 48 truncates.
    assert token_lengths(bi_encoder, ["cat", "cat " * 100]) == [3, 48]
    assert token_lengths(bi_encoder, ["cat"], prompt="the dog ") == [5]


# ---------------------------------------------------------------------------------------------
# Corpus encoding, dense retrieval, reranking
# ---------------------------------------------------------------------------------------------
def test_encode_corpus_equals_the_library_in_several_chunks(bi_encoder, tmp_path):
    corpus = corpus_file(tmp_path / "corpus.parquet", n=23)
    out = tmp_path / "emb" / "tiny"
    encode_corpus(bi_encoder, str(corpus), str(out), batch_size=4, chunk=10, batch_tokens=64)
    assert sorted(os.listdir(out)) == ["doc_ids.json", "embeddings.npy"]
    assert sorted(os.listdir(out.parent)) == ["tiny"]  # no temporary left beside it
    matrix, doc_ids = load_embeddings(str(out))
    assert doc_ids == [f"d{i}" for i in range(23)]
    expected = library(bi_encoder, doc_texts(pq.read_table(corpus)))
    np.testing.assert_allclose(np.asarray(matrix), expected, atol=ATOL, rtol=0)


def test_load_embeddings_refuses_mismatched_ids(tmp_path):
    np.save(tmp_path / "embeddings.npy", np.zeros((3, 4), dtype=np.float32))
    (tmp_path / "doc_ids.json").write_text(json.dumps(["a", "b"]))
    with pytest.raises(InputError, match=r"2 doc ids but 3 embeddings"):
        load_embeddings(str(tmp_path))


def test_dense_retrieve_ranks_as_the_library(bi_encoder, tmp_path):
    corpus = corpus_file(tmp_path / "corpus.parquet", n=30)
    emb = tmp_path / "emb"
    encode_corpus(bi_encoder, str(corpus), str(emb), batch_tokens=100)
    queries = dict(zip(["q1", "q2", "q3"], random_texts(3, seed=5, longest=6), strict=True))
    run = dense_retrieve(bi_encoder, str(emb), queries, k=7, batch_tokens=16)
    docs = library(bi_encoder, doc_texts(pq.read_table(corpus)))
    for qid, text in queries.items():
        scores = docs @ library(bi_encoder, [text])[0]
        assert_same_ranking(run[qid], {f"d{i}": float(s) for i, s in enumerate(scores)}, k=7)


def test_rerank_equals_library_scores_and_ranking(bi_encoder, tmp_path):
    corpus = corpus_file(tmp_path / "corpus.parquet", n=30)
    queries = {"q1": "cat dog", "q2": "river city law", "q3": "what is the gene"}
    rng = np.random.default_rng(3)
    candidates = {
        q: {f"d{i}": float(12 - r) for r, i in enumerate(rng.choice(30, 12, replace=False))}
        for q in queries
    }
    run = rerank_candidates(
        bi_encoder, str(corpus), queries, candidates, depth=10, batch_size=3, batch_tokens=50
    )
    table = pq.read_table(corpus)
    text_of = dict(zip(table.column("doc_id").to_pylist(), doc_texts(table), strict=True))
    for qid, docs in candidates.items():
        top = [d for d, _ in ranked(docs)[:10]]
        assert sorted(run[qid]) == sorted(top)
        expected = (
            library(bi_encoder, [text_of[d] for d in top]) @ library(bi_encoder, [queries[qid]])[0]
        )
        assert_same_ranking(run[qid], dict(zip(top, map(float, expected), strict=True)), k=10)


def test_rerank_refuses_queries_without_text_and_unknown_documents(bi_encoder, tmp_path):
    corpus = corpus_file(tmp_path / "corpus.parquet", n=5)
    with pytest.raises(InputError, match=r"queries with no text: \['q2'\]"):
        rerank_candidates(bi_encoder, str(corpus), {"q1": "cat"}, {"q2": {"d1": 1.0}}, depth=5)
    with pytest.raises(InputError, match=r"not in the corpus.*'ghost'"):
        rerank_candidates(bi_encoder, str(corpus), {"q1": "cat"}, {"q1": {"ghost": 1.0}}, depth=5)


def test_cross_encoder_pairs_and_rerank_equal_the_library(tiny_models, tmp_path):  # noqa: F811
    import torch

    from irflow.batching import predict_pairs
    from irflow.cross_encoder import load_cross_encoder
    from irflow.cross_encoder import rerank_candidates as cross_rerank
    from irflow.models import ModelRef

    model = load_cross_encoder(ModelRef("ce", path=str(tiny_models["cross-encoder"])), "cpu")
    texts = random_texts(12, seed=4)
    pairs = [(texts[i % 3], texts[i]) for i in range(12)] + [(texts[0], texts[3])]
    expected = model.predict(pairs, activation_fn=torch.nn.Identity(), show_progress_bar=False)
    counters = Counters()
    got = predict_pairs(model, pairs, batch_tokens=60, counters=counters)
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)
    assert counters.model_inputs == 12  # the repeated pair is scored once
    assert predict_pairs(model, []).shape == (0,)

    corpus = corpus_file(tmp_path / "corpus.parquet", n=15)
    table = pq.read_table(corpus)
    text_of = dict(zip(table.column("doc_id").to_pylist(), doc_texts(table), strict=True))
    queries = {"q1": "cat dog", "q2": "river city"}
    candidates = {q: {f"d{i}": float(-i) for i in range(15)} for q in queries}
    run = cross_rerank(model, str(corpus), queries, candidates, depth=8, batch_tokens=64)
    for qid in queries:
        top = [f"d{i}" for i in range(8)]
        scores = model.predict(
            [(queries[qid], text_of[d]) for d in top],
            activation_fn=torch.nn.Identity(),
            show_progress_bar=False,
        )
        assert_same_ranking(run[qid], dict(zip(top, map(float, scores), strict=True)), k=8)


# ---------------------------------------------------------------------------------------------
# Matryoshka truncation
# ---------------------------------------------------------------------------------------------
def test_truncate_dim_renormalises_by_hand():
    emb = np.array([[3.0, 4.0, 12.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(truncate_dim(emb, 2), [[0.6, 0.8], [0.0, 0.0]])
    assert truncate_dim(emb, None) is emb and truncate_dim(emb, 3) is emb
    with pytest.raises(InputError, match=r"dim 4 is not between 1 and .* 3"):
        truncate_dim(emb, 4)


def test_exact_search_with_dim_in_chunks_equals_search_on_truncated_rows():
    rng = np.random.default_rng(0)
    docs = rng.normal(size=(50, 8)).astype(np.float32)
    queries = rng.normal(size=(4, 8)).astype(np.float32)
    scores, index = exact_search(queries, docs, k=5, chunk=7, dim=3)
    t_docs, t_queries = truncate_dim(docs, 3), truncate_dim(queries, 3)
    full = t_queries @ t_docs.T
    assert index.tolist() == np.argsort(-full, axis=1, kind="stable")[:, :5].tolist()
    np.testing.assert_allclose(scores, np.take_along_axis(full, index, 1), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# The real model
# ---------------------------------------------------------------------------------------------
@pytest.mark.models
def test_real_minilm_encoding_equals_library_call():
    import torch
    from sentence_transformers import SentenceTransformer

    path = REPO / "resources" / "models" / "all-MiniLM-L6-v2"
    corpus = REPO.parent / "shared" / "data" / "dl19-bm25-top100" / "corpus.jsonl"
    require_models("all-MiniLM-L6-v2")
    require_data("dl19-bm25-top100/corpus.jsonl")
    torch.set_num_threads(2)
    model = SentenceTransformer(str(path), device="cpu")
    model.max_seq_length = 256
    texts = []
    with open(corpus, encoding="utf-8") as handle:
        for line, _ in zip(handle, range(24), strict=False):
            record = json.loads(line)
            texts.append(f"{record.get('title', '')} {record['text']}".strip())
    texts += ["what is the fastest land animal", "Paris is the capital of France. " * 60]
    np.testing.assert_allclose(encode_texts(model, texts), library(model, texts), atol=ATOL, rtol=0)
