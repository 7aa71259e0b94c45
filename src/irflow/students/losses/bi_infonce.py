"""Bi-encoder InfoNCE with in-batch and hard negatives: sentence-transformers'
``MultipleNegativesRankingLoss`` (``infonce``) or ``CachedMultipleNegativesRankingLoss``
(``cached_infonce``: GradCache, so the effective batch can exceed what fits in memory; same
loss value), optionally wrapped in ``MatryoshkaLoss``, all unchanged.

Inputs: columns (query, positive, negative_1, ..., negative_k); no labels. With ``sim`` the
cosine (default) or dot product and temperature ``T`` (the library's ``scale = 1/T``; default
``T = 0.05``, the library's scale 20), for each query ``q_j`` of a batch of ``B`` samples,
with ``D`` all ``B`` positives and ``B * k`` negatives of the batch::

    -log( exp(sim(q_j, pos_j) / T) / sum_{d in D} exp(sim(q_j, d) / T) )

averaged over the batch: every other sample's positive and negatives are negatives for ``q_j``.
Use ``batch_sampler: no_duplicates`` so that a query's other positives (the same query text in
two samples) are not in its batch as negatives. Under torchrun (``WORLD_SIZE`` > 1) the
embeddings of all processes are gathered (the library's ``gather_across_devices``), so the
negatives are those of the global batch, as on one device.
"""

from __future__ import annotations

import os

from irflow.students.losses.bi_margin_mse import matryoshka, similarity_fn

DEFAULT_TEMPERATURE = 0.05
DEFAULT_MINI_BATCH = 32


def build(model, objective):
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    loss = MultipleNegativesRankingLoss(
        model,
        scale=1.0 / (objective.temperature or DEFAULT_TEMPERATURE),
        similarity_fct=similarity_fn(objective.similarity, pairwise=False),
        gather_across_devices=_distributed(),
    )
    return matryoshka(model, loss, objective)


def _distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def build_cached(model, objective):
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
    )

    loss = CachedMultipleNegativesRankingLoss(
        model,
        scale=1.0 / (objective.temperature or DEFAULT_TEMPERATURE),
        similarity_fct=similarity_fn(objective.similarity, pairwise=False),
        mini_batch_size=objective.mini_batch_size or DEFAULT_MINI_BATCH,
        gather_across_devices=_distributed(),
    )
    return matryoshka(model, loss, objective)
