"""Cross-encoder MarginMSE: sentence-transformers' ``cross_encoder.losses.MarginMSELoss``.

Inputs: columns (query, positive, negative_1, ..., negative_k). Labels: the teacher's raw scores
``[t_pos, t_neg_1, ..., t_neg_k]`` (the library turns them into margins ``t_pos - t_neg_i``).
Loss: ``mean over samples and i of ((s_pos - s_neg_i) - (t_pos - t_neg_i))^2`` on the student's
raw logits ``s`` (Hofstatter et al. 2020), exactly the library's computation.
"""

from __future__ import annotations


def build(model, objective):
    from sentence_transformers.cross_encoder.losses import MarginMSELoss

    return MarginMSELoss(model)
