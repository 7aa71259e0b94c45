"""A tiny self-contained collection, a tiny random bi-encoder and a config that runs the whole
eval path on them in seconds (prepare → BM25 → bi-encoder rerank → evaluate → tables → report).

Shared by test_provenance.py, test_checks.py and test_report.py (it holds no tests itself).

The collection is built so that BM25's ranking, and so its metrics, follow by hand: every query
shares terms only with its relevant documents, and the document matching more query terms is
the more relevant one. Hence BM25 ranks every relevant document first, in label order, and
nDCG@10 = RR@10 = AP = 1.0 for every query.
"""

from __future__ import annotations

import json
from pathlib import Path

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
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as out:
        for doc_id, text in DOCS.items():
            out.write(json.dumps({"_id": doc_id, "title": "", "text": text}) + "\n")
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as out:
        for qid, text in QUERIES.items():
            out.write(json.dumps({"_id": qid, "text": text}) + "\n")
    lines = ["query-id\tcorpus-id\tscore"]
    lines += [f"{q}\t{d}\t{label}" for q, docs in QRELS.items() for d, label in docs.items()]
    (folder / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    return folder


def tiny_bi_encoder(folder: Path, seed: int = 0) -> Path:
    """A sentence-transformers folder: random 2-layer BERT (hidden 32), mean pooling, normalised."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling
    from sentence_transformers.sentence_transformer.modules import Transformer as STTransformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = sorted({w for text in [*DOCS.values(), *QUERIES.values()] for w in text.split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    bert = folder.parent / f"{folder.name}-bert"
    bert.mkdir(parents=True, exist_ok=True)
    vocab_file = folder.parent / f"{folder.name}-vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(vocab_file)).save_pretrained(bert)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    BertModel(config).save_pretrained(bert)
    modules = [STTransformer(str(bert), max_seq_length=32), Pooling(32, "mean"), Normalize()]
    SentenceTransformer(modules=modules, device="cpu").save(str(folder))
    return folder


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
