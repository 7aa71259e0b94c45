"""Builders of tiny test inputs, shared by the test modules (it holds no tests itself).

* random BERT models (hidden size 32, a few thousand parameters, a WordPiece vocabulary of a
  few dozen words) and sentence-transformers folders around them, so a forward pass or a
  training step takes milliseconds;
* BEIR folders (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``);
* corpus, queries and teacher-scores tables in irflow's Parquet schemas.

The callers choose the words, seeds and sizes: the same arguments give the same bytes, so a
test's expectations do not depend on which module built its inputs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# Word lists for the vocabularies and the random texts: each extends the one before, so a
# module that needs more words keeps the others' texts and token ids.
WORD_TEXT = """
the a of is what how why who to in on for and cat dog bird fish tree river city law court
protein cell gene drug virus heart brain blood study trial effect risk water fire sun moon
"""
EXTRA_WORD_TEXT = "star rain snow wind stone iron gold paper music art game ball team"
PROMPT_WORD_TEXT = "yes no query document relevant answer"  # the causal-LM teachers' words
WORDS = WORD_TEXT.split()
EXTRA_WORDS = EXTRA_WORD_TEXT.split()
PROMPT_WORDS = PROMPT_WORD_TEXT.split()

BERT_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
HIDDEN_SIZE = 32


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------
def tiny_bert(
    folder: Path,
    words: Sequence[str],
    *,
    layers: int = 2,
    seed: int = 0,
    dropout: float = 0.0,
    vocab_file: Path | None = None,
) -> Path:
    """A random ``BertModel`` (hidden size 32, 2 heads) and its WordPiece tokenizer over the
    special tokens and ``words``, saved in ``folder``. The vocabulary list is written to
    ``vocab_file`` (default: ``<folder>-vocab.txt`` beside it)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = [*BERT_SPECIAL_TOKENS, *words]
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file = vocab_file or folder.parent / f"{folder.name}-vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(vocab_file)).save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=HIDDEN_SIZE,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    BertModel(config).save_pretrained(folder)
    return folder


def tiny_sentence_transformer(
    folder: Path, bert: Path, max_seq_length: int, normalize: bool = True
) -> Path:
    """A sentence-transformers folder: the model in ``bert``, mean pooling and (by default)
    normalisation."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling
    from sentence_transformers.sentence_transformer.modules import Transformer as STTransformer

    modules = [
        STTransformer(str(bert), max_seq_length=max_seq_length),
        Pooling(HIDDEN_SIZE, "mean"),
    ]
    if normalize:
        modules.append(Normalize())
    SentenceTransformer(modules=modules, device="cpu").save(str(folder))
    return folder


# ---------------------------------------------------------------------------------------------
# Collections
# ---------------------------------------------------------------------------------------------
def write_beir(
    folder: Path,
    docs: Mapping[str, str],
    queries: Mapping[str, str],
    qrels: Mapping[str, Iterable[tuple[str, str, int]]],
) -> Path:
    """``corpus.jsonl`` (empty titles), ``queries.jsonl`` and ``qrels/<split>.tsv`` for every
    split of ``qrels`` ({split: [(query id, doc id, label), ...]}), in BEIR's layout."""
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as out:
        for doc_id, text in docs.items():
            out.write(json.dumps({"_id": doc_id, "title": "", "text": text}) + "\n")
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as out:
        for qid, text in queries.items():
            out.write(json.dumps({"_id": qid, "text": text}) + "\n")
    for split, rows in qrels.items():
        lines = ["query-id\tcorpus-id\tscore", *(f"{q}\t{d}\t{label}" for q, d, label in rows)]
        (folder / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return folder


def write_corpus_parquet(
    path: Path, doc_ids: Sequence[str], texts: Sequence[str], titles: Sequence[str] | None = None
) -> Path:
    """A corpus Parquet file (``irflow.data.CORPUS_SCHEMA``); empty titles unless given."""
    from irflow.data import CORPUS_SCHEMA

    titles = [""] * len(doc_ids) if titles is None else titles
    table = pa.table({"doc_id": doc_ids, "title": titles, "text": texts}, schema=CORPUS_SCHEMA)
    pq.write_table(table, path)
    return path


def write_queries_parquet(path: Path, queries: Mapping[str, str]) -> Path:
    """A queries Parquet file (``irflow.data.QUERIES_SCHEMA``), in the mapping's order."""
    from irflow.data import QUERIES_SCHEMA

    table = pa.table(
        {"query_id": list(queries), "text": list(queries.values())}, schema=QUERIES_SCHEMA
    )
    pq.write_table(table, path)
    return path


def scores_table(rows: Iterable[tuple[str, str, float, Sequence[float]]]) -> pa.Table:
    """A teacher-scores table from (query id, positive id, positive score, negative scores)
    rows; the negatives are named ``n0``, ``n1``, ... in each row."""
    from irflow.training_data import SCORES_SCHEMA

    rows = list(rows)
    return pa.table(
        {
            "query_id": [r[0] for r in rows],
            "pos_id": [r[1] for r in rows],
            "pos_score": [r[2] for r in rows],
            "neg_ids": [[f"n{i}" for i in range(len(r[3]))] for r in rows],
            "neg_scores": [list(r[3]) for r in rows],
        },
        schema=SCORES_SCHEMA,
    )
