"""Cross-encoder CL: InfoNCE over a query's positive and its hard negatives.

Inputs: columns (query, positive, negative_1, ..., negative_k); no labels (the positive is the
first document). Loss, with the student's logits ``s`` and temperature ``T``::

    mean over samples of  -log( exp(s_pos / T) / sum_{d in pos, negs} exp(s_d / T) )

This is sentence-transformers' ``cross_encoder.losses.MultipleNegativesRankingLoss`` with
``scale = 1/T`` and no activation on the logits (the library's default squashes them with a
sigmoid and scales by 10). The subclass only changes how many *in-batch* negatives (other
samples' documents) each query also sees: the library always samples at least one, while
contrastive distillation setups score the positive against its own hard negatives only, so the
default here is ``in_batch_negatives: 0``; a positive value restores the library's sampling.
"""

from __future__ import annotations

from sentence_transformers.cross_encoder.losses import MultipleNegativesRankingLoss

DEFAULT_TEMPERATURE = 1.0


class HardNegativeInfoNCELoss(MultipleNegativesRankingLoss):
    """MultipleNegativesRankingLoss whose in-batch negatives may be switched off."""

    def get_in_batch_negatives(self, anchors, candidates):
        if not self.num_negatives:
            return iter(())
        return super().get_in_batch_negatives(anchors, candidates)

    def get_config_dict(self):
        return {**super().get_config_dict(), "temperature": 1.0 / self.scale}


def build(model, objective) -> HardNegativeInfoNCELoss:
    temperature = objective.temperature or DEFAULT_TEMPERATURE
    return HardNegativeInfoNCELoss(
        model,
        num_negatives=objective.in_batch_negatives or 0,
        scale=1.0 / temperature,
        activation_fn=None,
    )
