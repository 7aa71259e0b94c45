"""Corpus encoding split across a job's devices (irflow.dense.encode_corpus_split, what rule
encode_corpus does with gpus: N > 1): two torchrun processes on this CPU, one thread each, write
the folder that one process writes, byte for byte (embeddings.npy and doc_ids.json)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_training_data import WORDS, tiny_models  # noqa: F401  (session fixture)

from irflow.data import CORPUS_SCHEMA


@pytest.mark.slow  # two fresh Python processes importing torch: ~20 s
def test_two_processes_write_the_one_process_embeddings(tiny_models, tmp_path, monkeypatch):  # noqa: F811
    import torch
    from sentence_transformers import SentenceTransformer

    from irflow.dense import encode_corpus, encode_corpus_split, load_embeddings

    monkeypatch.setenv("IRFLOW_DEVICE", "cpu")
    rng = np.random.default_rng(4)
    n = 45  # chunks of 8: 6 chunks to the processes, an uneven last one
    texts = [" ".join(rng.choice(WORDS, size=rng.integers(1, 60))) for _ in range(n)]
    corpus = tmp_path / "corpus.parquet"
    pq.write_table(
        pa.table({"doc_id": [f"d{i}" for i in range(n)], "title": ["t"] * n, "text": texts},
                 schema=CORPUS_SCHEMA), corpus, row_group_size=16)  # fmt: skip
    path = tiny_models["bi-encoder"]
    torch.set_num_threads(1)
    model = SentenceTransformer(str(path), device="cpu")
    encode_corpus(model, str(corpus), str(tmp_path / "one"), batch_size=4, chunk=8)
    encode_corpus_split(
        {"name": "tiny", "path": str(path)}, str(corpus), str(tmp_path / "two"), 2,
        batch_size=4, chunk=8, threads_per_process=1,
    )  # fmt: skip
    for name in ("embeddings.npy", "doc_ids.json"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()
    matrix, ids = load_embeddings(str(tmp_path / "two"))
    assert matrix.shape[0] == n and ids[-1] == f"d{n - 1}"
    assert np.allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)
