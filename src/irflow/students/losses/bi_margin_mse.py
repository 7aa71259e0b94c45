"""Bi-encoder MarginMSE, optionally Matryoshka: sentence-transformers' ``MarginMSELoss``
(wrapped in ``MatryoshkaLoss`` when ``matryoshka_dims`` is set), unchanged.

Inputs: columns (query, positive, negative_1, ..., negative_k). Labels: the teacher's raw scores
``[t_pos, t_neg_1, ..., t_neg_k]`` (the library turns them into margins). With ``sim`` the
cosine (default) or the dot product of the student's embeddings::

    loss = mean over samples and i of ((sim(q, pos) - sim(q, neg_i)) - (t_pos - t_neg_i))^2

With Matryoshka dimensions ``D`` and weights ``w`` (default 1): ``sum_{d in D} w_d * loss_d``,
where ``loss_d`` uses the first ``d`` embedding dimensions, L2-normalised by the library (so the
similarity is the cosine at every dimension; ``similarity: dot`` is refused with Matryoshka).
"""

from __future__ import annotations


def similarity_fn(name: str | None, pairwise: bool = True):
    from sentence_transformers import util

    if (name or "cosine") == "cosine":
        return util.pairwise_cos_sim if pairwise else util.cos_sim
    return util.pairwise_dot_score if pairwise else util.dot_score


def matryoshka(model, loss, objective):
    """``loss`` wrapped in MatryoshkaLoss when the objective has dimensions, else ``loss``."""
    if not objective.matryoshka_dims:
        return loss
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss

    if objective.similarity == "dot":
        raise ValueError(
            "objective.similarity 'dot' cannot be combined with matryoshka_dims: "
            "sentence-transformers normalises truncated embeddings, so the similarity is cosine"
        )
    size = model.get_embedding_dimension()
    too_big = [d for d in objective.matryoshka_dims if d > size]
    if too_big:
        raise ValueError(
            f"objective.matryoshka_dims {too_big} exceed the model's embedding dimension {size}"
        )
    return MatryoshkaLoss(
        model,
        loss,
        matryoshka_dims=list(objective.matryoshka_dims),
        matryoshka_weights=list(objective.matryoshka_weights)
        if objective.matryoshka_weights
        else None,
    )


def build(model, objective):
    from sentence_transformers.sentence_transformer.losses import MarginMSELoss

    loss = MarginMSELoss(model, similarity_fct=similarity_fn(objective.similarity))
    return matryoshka(model, loss, objective)
