"""Cross-encoder (sentence-transformers CrossEncoder) loading and candidate reranking.

Scores are the raw model outputs (logits, no sigmoid): they keep the ranking, and distillation
losses downstream need the unsquashed values.
"""

from __future__ import annotations

from irflow.batching import predict_pairs
from irflow.io import InputError
from irflow.models import ModelRef, model_kwargs
from irflow.reranking import rerank_by_pairs


def load_cross_encoder(ref: ModelRef, device: str):
    import torch
    from sentence_transformers import CrossEncoder

    try:
        return CrossEncoder(
            ref.name_or_path,
            device=device,
            revision=ref.revision,
            trust_remote_code=ref.trust_remote_code,
            max_length=ref.max_length,
            model_kwargs=model_kwargs(device),
            activation_fn=torch.nn.Identity(),
        )
    except InputError:
        raise
    except Exception as err:  # many library error types; the user needs the model's name
        raise InputError(
            f"model {ref.name!r} ({ref.hf_id or ref.path}) could not be loaded: {err}"
        ) from err


def rerank_candidates(
    model,
    corpus_parquet: str,
    queries: dict[str, str],
    candidates: dict[str, dict[str, float]],
    depth: int,
    batch_size: int = 32,
    batch_tokens: int | None = None,
) -> dict[str, dict[str, float]]:
    """Raw scores of each query's top-``depth`` candidates, batched by token budget
    (:func:`irflow.batching.predict_pairs`; ``batch_size`` caps the rows of a batch)."""
    return rerank_by_pairs(
        corpus_parquet,
        queries,
        candidates,
        depth,
        lambda pairs: predict_pairs(model, pairs, batch_tokens=batch_tokens, max_batch=batch_size),
    )
