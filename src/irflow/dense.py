"""Bi-encoder (sentence-transformers) corpus encoding, exact dense retrieval and reranking.

Embeddings are L2-normalised, so the dot products below are cosine similarities. Texts go
through :func:`irflow.batching.encode_texts` (the teachers' batching: each distinct text once,
token-length sorted, batches by a token budget, inference mode); the embeddings equal
``SentenceTransformer.encode(..., normalize_embeddings=True)`` to float32 rounding, only faster
(benchmarks/results/encoding.md). ``batch_size`` caps the rows of a batch, ``batch_tokens``
its padded tokens (default :data:`irflow.batching.DEFAULT_BATCH_TOKENS` for the device).

**Split across a job's devices** (:func:`encode_corpus_split`; rule ``encode_corpus`` with
``gpus: N > 1``): N torchrun processes (:mod:`irflow.launch`), one per GPU (``cuda:<LOCAL_RANK>``;
CPU processes on a machine without CUDA), each with its own copy of the model; process ``r``
encodes chunks ``r, r + N, r + 2N, ...`` of the corpus and writes their rows into the one
``embeddings.npy``, memory-mapped, at the rows one process would write them to. A chunk's
batches depend only on its own texts, so the folder is the one-process folder byte for byte
when every device computes as the one process does (the same device type and thread count;
tested on CPU). The unit of work is a chunk (``chunk`` documents, default 20,000).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from irflow.batching import embedding_dimension, encode_texts
from irflow.data import doc_texts
from irflow.io import InputError, atomic_output, open_parquet, write_json_atomic
from irflow.logs import Progress
from irflow.reranking import rerank_by_embeddings

log = logging.getLogger(__name__)


def _encode(
    model,
    texts: list[str],
    batch_size: int,
    prompt: str | None = None,
    batch_tokens: int | None = None,
) -> np.ndarray:
    return encode_texts(
        model, texts, prompt=prompt, batch_tokens=batch_tokens, max_batch=batch_size
    )


class _CountingModel:
    """The model, with the texts of each ``encode`` call counted into a :class:`Progress`
    (so that a chunk's progress shows batch by batch; everything else is the model's)."""

    def __init__(self, model, progress: Progress) -> None:
        self._model, self._progress = model, progress

    def __getattr__(self, name: str):
        return getattr(self._model, name)

    def encode(self, sentences, *args, **kwargs):
        out = self._model.encode(sentences, *args, **kwargs)
        self._progress.advance(len(sentences))
        return out


def encode_corpus(
    model,
    corpus_parquet: str,
    out_dir: str,
    batch_size: int = 64,
    chunk: int = 20_000,
    batch_tokens: int | None = None,
) -> None:
    """Encode the corpus chunk by chunk into ``embeddings.npy`` (memory-mapped, float32)."""
    progress = Progress("corpus encoding", unit="docs", logger=log)
    counted = _CountingModel(model, progress)
    write_corpus_embeddings(
        corpus_parquet,
        out_dir,
        lambda: embedding_dimension(model),
        lambda texts: _encode(counted, texts, batch_size, None, batch_tokens),
        chunk,
        progress=progress,
    )


def encode_corpus_split(
    model_entry: dict,
    corpus_parquet: str,
    out_dir: str,
    processes: int,
    batch_size: int = 64,
    chunk: int = 20_000,
    batch_tokens: int | None = None,
    threads_per_process: int | None = None,
) -> None:
    """:func:`encode_corpus` in ``processes`` torchrun processes (see the module docstring);
    ``model_entry``: the model's config entry with its ``name`` (each process loads it)."""
    from irflow import launch

    parquet = open_parquet(corpus_parquet)  # checked before any process starts
    with atomic_output(out_dir, directory=True) as tmp:
        launch.run(
            processes,
            "irflow.dense:encode_corpus_part",
            {
                "model_entry": dict(model_entry),
                "corpus_parquet": str(corpus_parquet),
                "matrix_path": str(tmp / "embeddings.npy"),
                "batch_size": batch_size,
                "chunk": chunk,
                "batch_tokens": batch_tokens,
            },
            threads_per_process,
        )
        doc_ids = parquet.read(columns=["doc_id"]).column("doc_id").to_pylist()
        write_json_atomic(tmp / "doc_ids.json", doc_ids)


def encode_corpus_part(
    model_entry: dict,
    corpus_parquet: str,
    matrix_path: str,
    batch_size: int = 64,
    chunk: int = 20_000,
    batch_tokens: int | None = None,
) -> dict:
    """One torchrun process of :func:`encode_corpus_split`: rank 0 creates the memory-mapped
    matrix, every rank writes the rows of its chunks (``i % WORLD_SIZE == RANK``)."""
    import os

    import torch.distributed as dist

    from irflow.models import ModelRef, load_sentence_transformer, pick_device

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = pick_device()
    if device == "cuda":
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    entry = dict(model_entry)
    model = load_sentence_transformer(ModelRef.from_config(entry.pop("name"), entry), device)
    parquet = open_parquet(corpus_parquet)
    total = parquet.metadata.num_rows
    shape = (total, embedding_dimension(model))
    dist.init_process_group("gloo")  # a barrier only: the rows go through the file
    try:
        if rank == 0:
            matrix = np.lib.format.open_memmap(
                matrix_path, mode="w+", dtype=np.float32, shape=shape
            )
            matrix.flush()
        dist.barrier()
        if rank > 0:
            matrix = np.load(matrix_path, mmap_mode="r+")
        progress = Progress(f"corpus encoding (process {rank} of {world})", unit="docs", logger=log)
        progress.total = -(-total // world)  # about: chunks are dealt round-robin
        offset = done = 0
        for index, batch in enumerate(
            parquet.iter_batches(batch_size=chunk, columns=["doc_id", "title", "text"])
        ):
            if index % world == rank:
                texts = doc_texts(batch)
                matrix[offset : offset + len(texts)] = _encode(
                    model, texts, batch_size, None, batch_tokens
                )
                done += len(texts)
                progress.update(done)
            offset += batch.num_rows
        matrix.flush()
        del matrix
        dist.barrier()  # every process's rows are in the file
    finally:
        dist.destroy_process_group()
    return {"documents": total, "dimension": shape[1], "device": device}


def write_corpus_embeddings(
    corpus_parquet: str,
    out_dir: str,
    dimension: Callable[[], int],
    encode: Callable[[list[str]], np.ndarray],
    chunk: int = 20_000,
    progress: Progress | None = None,
) -> None:
    """Write ``embeddings.npy`` (float32, memory-mapped) and ``doc_ids.json`` into ``out_dir``
    (an atomic folder), reading the corpus ``chunk`` documents at a time, so memory stays flat
    whatever the corpus size. ``encode`` maps document texts to a ``(n, dimension())`` array;
    the corpus file is checked before the model is asked anything. Progress (documents done,
    rate, ETA) is logged to the job's log every 30 s, into ``progress`` if given."""
    parquet = open_parquet(corpus_parquet)
    total = parquet.metadata.num_rows
    progress = progress or Progress("corpus encoding", unit="docs", logger=log)
    progress.total = total
    with atomic_output(out_dir, directory=True) as tmp:
        matrix = np.lib.format.open_memmap(
            tmp / "embeddings.npy", mode="w+", dtype=np.float32, shape=(total, dimension())
        )
        doc_ids: list[str] = []
        offset = 0
        for batch in parquet.iter_batches(batch_size=chunk, columns=["doc_id", "title", "text"]):
            texts = doc_texts(batch)
            matrix[offset : offset + len(texts)] = encode(texts)
            doc_ids.extend(batch.column("doc_id").to_pylist())
            offset += len(texts)
            progress.update(offset)
        matrix.flush()
        del matrix
        write_json_atomic(tmp / "doc_ids.json", doc_ids)


def load_embeddings(emb_dir: str) -> tuple[np.ndarray, list[str]]:
    """The memory-mapped embedding matrix of an ``encode_corpus`` folder and its doc ids."""
    directory = Path(emb_dir)
    try:
        matrix = np.load(directory / "embeddings.npy", mmap_mode="r")
        doc_ids = json.loads((directory / "doc_ids.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # missing, truncated or not .npy / JSON
        raise InputError(f"{emb_dir}: not a readable embeddings folder ({err})") from None
    if matrix.ndim != 2 or not isinstance(doc_ids, list):
        raise InputError(f"{emb_dir}: expected a 2-d embeddings.npy and a JSON list of doc ids")
    if len(doc_ids) != matrix.shape[0]:
        raise InputError(f"{emb_dir}: {len(doc_ids)} doc ids but {matrix.shape[0]} embeddings")
    return matrix, doc_ids


def truncate_dim(emb: np.ndarray, dim: int | None) -> np.ndarray:
    """Matryoshka: the first ``dim`` dimensions of each row, L2-renormalised (dot products stay
    cosines; the direction equals truncating the raw embedding). ``None``: unchanged."""
    if dim is None or dim == emb.shape[1]:
        return emb
    if not 1 <= dim < emb.shape[1]:
        raise InputError(f"dim {dim} is not between 1 and the embedding dimension {emb.shape[1]}")
    cut = np.asarray(emb[:, :dim], dtype=np.float32)
    norms = np.linalg.norm(cut, axis=1, keepdims=True)
    # torch.nn.functional.normalize's eps: an all-zero prefix stays zero instead of NaN.
    return cut / np.maximum(norms, 1e-12)


def exact_search(
    query_emb: np.ndarray,
    doc_emb: np.ndarray,
    k: int,
    chunk: int = 65_536,
    dim: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner-product search over document chunks; returns (scores, indices).

    ``dim`` truncates both sides (:func:`truncate_dim`), the documents chunk by chunk so the
    memory-mapped matrix is never copied whole.
    """
    import torch

    def tensor(array: np.ndarray):
        # A memory-mapped block is read-only, which torch.from_numpy warns about on every
        # search; the block (at most ``chunk`` rows) is copied instead.
        array = np.ascontiguousarray(array)
        return torch.from_numpy(array if array.flags.writeable else array.copy())

    k = min(k, doc_emb.shape[0])
    queries = tensor(truncate_dim(query_emb, dim))
    best_scores = torch.full((queries.shape[0], 0), float("-inf"))
    best_index = torch.zeros((queries.shape[0], 0), dtype=torch.long)
    for start in range(0, doc_emb.shape[0], chunk):
        block = doc_emb[start : start + chunk]
        block = tensor(truncate_dim(block, dim))
        scores = queries @ block.T
        top = torch.topk(scores, min(k, scores.shape[1]), dim=1)
        best_scores = torch.cat([best_scores, top.values], dim=1)
        best_index = torch.cat([best_index, top.indices + start], dim=1)
        keep = torch.topk(best_scores, min(k, best_scores.shape[1]), dim=1)
        best_scores = keep.values
        best_index = torch.gather(best_index, 1, keep.indices)
    return best_scores.numpy(), best_index.numpy()


def dense_retrieve(
    model,
    emb_dir: str,
    queries: dict[str, str],
    k: int,
    batch_size: int = 64,
    query_prompt: str | None = None,
    batch_tokens: int | None = None,
    dim: int | None = None,
) -> dict[str, dict[str, float]]:
    """Top-``k`` documents of each query by cosine (``dim``: Matryoshka truncation)."""
    doc_emb, doc_ids = load_embeddings(emb_dir)  # a bad folder fails before any encoding
    qids = sorted(queries)
    query_emb = _encode(model, [queries[q] for q in qids], batch_size, query_prompt, batch_tokens)
    return search_embeddings(emb_dir, doc_emb, doc_ids, qids, query_emb, k, dim)


def search_embeddings(
    emb_dir: str,
    doc_emb: np.ndarray,
    doc_ids: list[str],
    qids: list[str],
    query_emb: np.ndarray,
    k: int,
    dim: int | None = None,
) -> dict[str, dict[str, float]]:
    """Exact top-``k`` of each query (row ``i`` of ``query_emb`` is ``qids[i]``) over the
    embeddings of an :func:`encode_corpus` folder (``emb_dir``, from :func:`load_embeddings`),
    as ``{query_id: {doc_id: score}}``."""
    if query_emb.shape[1] != doc_emb.shape[1]:
        raise InputError(
            f"{emb_dir}: corpus embeddings have dimension {doc_emb.shape[1]}, the query model "
            f"gives {query_emb.shape[1]}; encode the corpus with the same model"
        )
    scores, index = exact_search(query_emb, doc_emb, k, dim=dim)
    return {
        qid: {doc_ids[index[row, col]]: float(scores[row, col]) for col in range(index.shape[1])}
        for row, qid in enumerate(qids)
    }


def rerank_candidates(
    model,
    corpus_parquet: str,
    queries: dict[str, str],
    candidates: dict[str, dict[str, float]],
    depth: int,
    batch_size: int = 64,
    query_prompt: str | None = None,
    batch_tokens: int | None = None,
    dim: int | None = None,
) -> dict[str, dict[str, float]]:
    """Score each query's top-``depth`` candidates by cosine similarity (``dim``: Matryoshka
    truncation, :func:`truncate_dim`)."""

    def encoder(prompt: str | None):
        return lambda texts: truncate_dim(
            _encode(model, texts, batch_size, prompt, batch_tokens), dim
        )

    return rerank_by_embeddings(
        corpus_parquet, queries, candidates, depth, encoder(query_prompt), encoder(None)
    )
