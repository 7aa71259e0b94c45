"""A tiny self-contained collection, a tiny random bi-encoder and a config that runs the whole
eval path on them in seconds (prepare → BM25 → bi-encoder rerank → evaluate → tables → report).

Shared by test_provenance.py, test_checks.py and test_report.py (it holds no tests itself).

The collection is built so that BM25's ranking, and so its metrics, follow by hand: every query
shares terms only with its relevant documents, and the document matching more query terms is
the more relevant one. Hence BM25 ranks every relevant document first, in label order, and
nDCG@10 = RR@10 = AP = 1.0 for every query.
"""

from __future__ import annotations

from pathlib import Path

from tiny_builders import tiny_bert, tiny_sentence_transformer, write_beir

DOCS = {
    "d1": "apple banana orchard",
    "d2": "river bridge stone",
    "d3": "violin concerto orchestra",
    "d4": "galaxy telescope orbit",
    "d5": "bread flour oven",
    "d6": "oven kitchen tile",
    "d7": "glacier summit rope",
    "d8": "pepper salt tomato",
}
QUERIES = {"q1": "apple banana", "q2": "river stone", "q3": "telescope orbit", "q4": "bread oven"}
QRELS = {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d4": 1}, "q4": {"d5": 2, "d6": 1}}
# Hand-derived (see the module docstring).
BM25_NDCG10 = 1.0


def tiny_beir(folder: Path) -> Path:
    """corpus.jsonl, queries.jsonl and qrels/test.tsv in BEIR's layout."""
    rows = [(q, d, label) for q, docs in QRELS.items() for d, label in docs.items()]
    return write_beir(folder, DOCS, QUERIES, {"test": rows})


def tiny_bi_encoder(folder: Path, seed: int = 0) -> Path:
    """A sentence-transformers folder: random 2-layer BERT (hidden 32), mean pooling, normalised."""
    words = sorted({w for text in [*DOCS.values(), *QUERIES.values()] for w in text.split()})
    bert = tiny_bert(folder.parent / f"{folder.name}-bert", words, seed=seed)
    return tiny_sentence_transformer(folder, bert, max_seq_length=32)


def tiny_config(data: Path, model: Path | None = None, **overrides) -> dict:
    """The eval path on the tiny collection; with ``model`` also a bi-encoder reranker."""
    config = {
        "seed": 42,
        "datasets": {"tiny": {"beir_folder": str(data), "split": "test"}},
        "models": {},
        "retrievers": {"bm25": {"kind": "bm25", "k1": 0.9, "b": 0.4, "depth": 5}},
        "rerankers": {},
        "baselines": [{"dataset": "tiny", "retriever": "bm25"}],
        "expectations": [
            {
                "dataset": "tiny",
                "run": "first-stage/bm25",
                "measure": "nDCG@10",
                "value": BM25_NDCG10,
                "tolerance": 0.0001,
                "source": "hand-computed (tests/report_fixtures.py)",
            }
        ],
        "resources": {"default": {"mem_mb": 1000, "runtime": 10, "cpus": 1}},
    }
    if model is not None:
        config["models"]["tiny-st"] = {"path": str(model), "max_length": 32, "batch_size": 8}
        config["rerankers"]["tiny-st"] = {"kind": "bi-encoder", "model": "tiny-st", "depth": 5}
        config["baselines"][0]["rerankers"] = ["tiny-st"]
    config.update(overrides)
    return config
