"""Cross-encoder BCE (pointwise): sentence-transformers' ``BinaryCrossEntropyLoss``, unchanged.

Inputs: (query, document) pairs, one column each; every sample contributes its positive and its
``num_negatives`` negatives as separate pairs. Labels: 1.0 for the positive, 0.0 for a negative
(the teacher's scores are not used). Loss: mean over the pairs of
``-[y log sigmoid(s) + (1 - y) log(1 - sigmoid(s))]`` for the student's logit ``s``, which is
exactly ``torch.nn.BCEWithLogitsLoss`` as the library computes it.
"""

from __future__ import annotations


def build(model, objective):
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    return BinaryCrossEntropyLoss(model)
