"""Shared builders for the students tests: tiny random models and a tiny scored training set.

Imported by the other ``test_students_*`` modules (it holds no tests itself). Every model is a
few-thousand-parameter random network (dropout off unless asked for), built in a temporary
directory, so a forward pass or a training step takes milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from irflow.data import CORPUS_SCHEMA, QUERIES_SCHEMA
from irflow.training_data.artifacts import write_table
from irflow.training_data.teacher import SCORES_SCHEMA

WORD_TEXT = """
the a of is what how why who to in on for and cat dog bird fish tree river city law court
protein cell gene drug virus heart brain blood study trial effect risk water fire sun moon
"""
WORDS = WORD_TEXT.split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]


def tiny_bert(folder: Path, layers: int = 4, seed: int = 0, dropout: float = 0.0) -> Path:
    """A BertModel with its WordPiece tokenizer."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab_file = folder.parent / f"{folder.name}-vocab.txt"
    vocab_file.write_text("\n".join(VOCAB) + "\n")
    BertTokenizerFast(vocab_file=str(vocab_file)).save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    BertModel(config).save_pretrained(folder)
    return folder


def tiny_bi_encoder(folder: Path, layers: int = 4, seed: int = 0, dropout: float = 0.0) -> Path:
    """A sentence-transformers folder: tiny BERT, mean pooling, normalisation."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling
    from sentence_transformers.sentence_transformer.modules import Transformer as STTransformer

    bert = tiny_bert(folder.parent / f"{folder.name}-bert", layers, seed, dropout)
    modules = [STTransformer(str(bert), max_seq_length=48), Pooling(32, "mean"), Normalize()]
    SentenceTransformer(modules=modules, device="cpu").save(str(folder))
    return folder


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
    corpus = pa.table(
        {
            "doc_id": docs,
            "title": ["" if i % 4 else "title words" for i in range(len(docs))],
            "text": [" ".join(rng.choice(WORDS, size=rng.integers(3, 12))) for _ in docs],
        },
        schema=CORPUS_SCHEMA,
    )
    pq.write_table(corpus, root / "corpus.parquet")
    qids = [f"q{i}" for i in range(8)]
    pq.write_table(
        pa.table(
            {"query_id": qids, "text": [" ".join(rng.choice(WORDS, size=3)) for _ in qids]},
            schema=QUERIES_SCHEMA,
        ),
        root / "queries.parquet",
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
