"""Batching by token budget, shared by every model call that runs many texts through a model.

The library default (``SentenceTransformer.encode``, ``CrossEncoder.predict``) cuts inputs into
batches of a fixed number of rows. Here inputs are deduplicated, sorted by *token* length and
cut into batches of at most ``batch_tokens`` padded tokens (and ``max_batch`` rows), so short
inputs go in large batches and long ones in small batches, with little padding; everything runs
under ``torch.inference_mode()``. The model calls stay the library's own, only what goes into a
batch changes, so the outputs equal the library call's to float32 rounding (padding positions
are masked out of attention and pooling).

Used by the bi-encoder paths (:mod:`irflow.dense`: corpus encoding, dense retrieval, reranking)
and by the teachers (:mod:`irflow.training_data.teacher`). The planner is written here rather
than taken from a library because sentence-transformers offers only fixed-count batches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Padded tokens per batch. On a 2-core CPU the budget that encodes DL19 passages fastest is
# 2k-4k tokens for MiniLM-L6 and 1k-2k for MPNet-base (hidden size twice MiniLM's); 8k is
# 10-30 % slower and 32k about 2x (the activations leave the caches). 2048 suits both; see
# benchmarks/results/{teacher_scoring,encoding}.md. GPUs want far larger batches.
DEFAULT_BATCH_TOKENS = {"cpu": 2048, "cuda": 65536}
DEFAULT_MAX_BATCH = 512


def default_batch_tokens(device: Any) -> int:
    """The token budget for a device (a ``torch.device`` or its name)."""
    return DEFAULT_BATCH_TOKENS["cuda" if str(device).startswith("cuda") else "cpu"]


def plan_batches(lengths: Sequence[int], batch_tokens: int, max_batch: int) -> list[list[int]]:
    """Indices grouped longest first into batches of at most ``batch_tokens`` padded tokens.

    Ties keep input order, so the plan is a pure function of the lengths.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    start = 0
    while start < len(order):
        longest = max(1, lengths[order[start]])
        size = max(1, min(max_batch, batch_tokens // longest))
        batches.append(order[start : start + size])
        start += size
    return batches


def unique(items: Sequence) -> tuple[list, np.ndarray]:
    """Distinct items in first-seen order, and each input's index into them."""
    position: dict = {}
    index = np.empty(len(items), dtype=np.int64)
    for i, item in enumerate(items):
        index[i] = position.setdefault(item, len(position))
    return list(position), index


@dataclass
class Counters:
    """Work done, for the stats: inputs run through the model, batches and tokens."""

    pairs: int = 0
    model_inputs: int = 0
    batches: int = 0
    tokens: int = 0
    padded_tokens: int = 0

    def add_batches(self, lengths: Sequence[int], batches: list[list[int]]) -> None:
        self.model_inputs += len(lengths)
        self.batches += len(batches)
        self.tokens += int(sum(lengths))
        self.padded_tokens += int(sum(len(b) * lengths[b[0]] for b in batches))

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def tokenizer_max_length(tokenizer, fallback: int | None = None) -> int:
    """The tokenizer's length limit, or ``fallback`` (512) when it declares none."""
    limit = getattr(tokenizer, "model_max_length", None)
    if limit is None or limit > 1_000_000:
        return fallback or 512
    return int(limit)


def embedding_dimension(model) -> int | None:
    """The model's output dimension (sentence-transformers renamed the method in 6.x)."""
    if hasattr(model, "get_embedding_dimension"):
        return model.get_embedding_dimension()
    return model.get_sentence_embedding_dimension()


def _effective_prompt(model, role: str | None, prompt: str | None) -> str | None:
    """The prompt ``encode``/``encode_query``/``encode_document`` will prepend (for lengths)."""
    if prompt is not None:
        return prompt
    prompts = getattr(model, "prompts", None) or {}
    if role is not None:
        return prompts.get(role)
    default = getattr(model, "default_prompt_name", None)
    return prompts.get(default) if default else None


def token_lengths(model, texts: Sequence[str], prompt: str | None = None) -> list[int]:
    """Token counts (with the prompt, truncated as the model truncates) of ``texts``.

    A model without a tokenizer gets a rough length (characters / 4): lengths only decide how
    texts are grouped into batches, never the embeddings.
    """
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        return [len(t) // 4 + 1 for t in texts]
    limit = getattr(model, "max_seq_length", None) or tokenizer_max_length(tokenizer)
    encoded = tokenizer(
        [f"{prompt}{t}" for t in texts] if prompt else list(texts),
        truncation=True,
        max_length=limit,
        return_attention_mask=False,
        return_token_type_ids=False,
    )["input_ids"]
    return [len(ids) for ids in encoded]


def encode_texts(
    model,
    texts: Sequence[str],
    *,
    role: str | None = None,
    prompt: str | None = None,
    batch_tokens: int | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    counters: Counters | None = None,
) -> np.ndarray:
    """L2-normalised float32 embeddings of ``texts`` (one row per text, in order).

    ``role`` None calls ``model.encode`` (with ``prompt``, if given); ``"query"`` or
    ``"document"`` call ``encode_query``/``encode_document``, which add the model's own prompt
    for that role unless ``prompt`` overrides it (for symmetric models such as MiniLM all three
    are exactly ``encode``). Each distinct text is encoded once. ``batch_tokens`` None takes
    :data:`DEFAULT_BATCH_TOKENS` for the model's device.
    """
    import torch

    if role not in (None, "query", "document"):
        raise ValueError(f"role must be None, 'query' or 'document', not {role!r}")
    if not texts:
        return np.zeros((0, embedding_dimension(model) or 0), dtype=np.float32)
    encode = {None: "encode", "query": "encode_query", "document": "encode_document"}[role]
    encode = getattr(model, encode)
    distinct, index = unique(list(texts))
    lengths = token_lengths(model, distinct, _effective_prompt(model, role, prompt))
    budget = batch_tokens or default_batch_tokens(getattr(model, "device", "cpu"))
    batches = plan_batches(lengths, budget, max_batch)
    if counters is not None:
        counters.add_batches(lengths, batches)
    out: np.ndarray | None = None
    with torch.inference_mode():
        for batch in batches:
            emb = encode(
                [distinct[i] for i in batch],
                batch_size=len(batch),
                prompt=prompt,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            if out is None:
                out = np.empty((len(distinct), emb.shape[1]), dtype=np.float32)
            out[batch] = emb
    return out if len(distinct) == len(texts) else out[index]


def pair_lengths(model, pairs: Sequence[tuple[str, str]]) -> list[int]:
    """Token counts of (query, document) pairs as a ``CrossEncoder`` truncates them."""
    tokenizer = model.tokenizer
    limit = getattr(model, "max_seq_length", None) or tokenizer_max_length(tokenizer)
    encoded = tokenizer(
        [q for q, _ in pairs],
        [d for _, d in pairs],
        truncation="longest_first",
        max_length=limit,
        return_attention_mask=False,
        return_token_type_ids=False,
    )["input_ids"]
    return [len(ids) for ids in encoded]


def predict_pairs(
    model,
    pairs: Sequence[tuple[str, str]],
    *,
    batch_tokens: int | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    counters: Counters | None = None,
) -> np.ndarray:
    """Raw float32 outputs (activation Identity) of a one-label ``CrossEncoder`` for ``pairs``.

    Equal to ``CrossEncoder.predict(pairs, activation_fn=Identity())`` to float32 rounding;
    each distinct pair is scored once, in batches by token budget.
    """
    import torch

    if not pairs:
        return np.zeros(0, dtype=np.float32)
    distinct, index = unique([tuple(p) for p in pairs])
    lengths = pair_lengths(model, distinct)
    budget = batch_tokens or default_batch_tokens(getattr(model, "device", "cpu"))
    batches = plan_batches(lengths, budget, max_batch)
    if counters is not None:
        counters.add_batches(lengths, batches)
    scores = np.empty(len(distinct), dtype=np.float32)
    identity = torch.nn.Identity()
    with torch.inference_mode():
        for batch in batches:
            scores[batch] = model.predict(
                [distinct[i] for i in batch],
                batch_size=len(batch),
                activation_fn=identity,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
    return scores if len(distinct) == len(pairs) else scores[index]


def shard_rows(
    num_rows: int, shard_index: int, num_shards: int, chunk_samples: int
) -> tuple[int, int]:
    """The row range ``[start, stop)`` of the samples that shard ``shard_index`` scores."""
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(f"shard {shard_index} of {num_shards}: need 0 <= shard < num_shards")
    if chunk_samples < 1:
        raise ValueError(f"chunk_samples must be >= 1, got {chunk_samples}")
    chunks = math.ceil(num_rows / chunk_samples)
    first = shard_index * chunks // num_shards
    last = (shard_index + 1) * chunks // num_shards
    return min(first * chunk_samples, num_rows), min(last * chunk_samples, num_rows)
