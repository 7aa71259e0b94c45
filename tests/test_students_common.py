"""Shared builders for the students tests: tiny random models and a tiny scored training set.

Imported by the other ``test_students_*`` modules (it holds no tests itself). Every model is a
few-thousand-parameter random network (dropout off unless asked for), built in a temporary
directory, so a forward pass or a training step takes milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
from tiny_builders import (
    BERT_SPECIAL_TOKENS,
    WORDS,
    tiny_bert,
    tiny_sentence_transformer,
    write_corpus_parquet,
    write_queries_parquet,
)

from irflow.training_data.artifacts import SCORES_SCHEMA, write_table

VOCAB = [*BERT_SPECIAL_TOKENS, *WORDS]


def tiny_bi_encoder(folder: Path, layers: int = 4, seed: int = 0, dropout: float = 0.0) -> Path:
    """A sentence-transformers folder: tiny BERT, mean pooling, normalisation."""
    bert = tiny_bert(
        folder.parent / f"{folder.name}-bert", WORDS, layers=layers, seed=seed, dropout=dropout
    )
    return tiny_sentence_transformer(folder, bert, max_seq_length=48)


def tiny_training_set(
    root: Path,
    n_samples: int = 12,
    n_negatives: int = 3,
    seed: int = 0,
    score_kind: str = "logit",
) -> dict[str, Path]:
    """Corpus, queries and a teacher-scores Parquet (samples with 2..n_negatives+1 negatives)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    docs = [f"d{i}" for i in range(60)]
    titles = ["" if i % 4 else "title words" for i in range(len(docs))]
    texts = [" ".join(rng.choice(WORDS, size=rng.integers(3, 12))) for _ in docs]
    write_corpus_parquet(root / "corpus.parquet", docs, texts, titles)
    qids = [f"q{i}" for i in range(8)]
    write_queries_parquet(
        root / "queries.parquet", {q: " ".join(rng.choice(WORDS, size=3)) for q in qids}
    )
    rows: dict[str, list] = {k: [] for k in SCORES_SCHEMA.names}
    for i in range(n_samples):
        k = n_negatives + (i % 2)  # every other sample has one extra negative
        rows["query_id"].append(qids[i % len(qids)])
        rows["pos_id"].append(docs[i])
        rows["pos_score"].append(float(rng.normal(2.0)))
        picks = rng.choice(np.arange(20, 60), size=k, replace=False)
        rows["neg_ids"].append([docs[j] for j in picks])
        rows["neg_scores"].append(rng.normal(size=k).astype(np.float32).tolist())
    meta = {"artifact": "teacher-scores", "score_kind": score_kind, "teacher": {"name": "tiny"}}
    write_table(root / "scores.parquet", pa.table(rows, schema=SCORES_SCHEMA), SCORES_SCHEMA, meta)
    return {
        "scores": root / "scores.parquet",
        "queries": root / "queries.parquet",
        "corpus": root / "corpus.parquet",
    }


def state_dicts_equal(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
