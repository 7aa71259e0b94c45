"""Cross-encoder KD: KL divergence between the teacher's and the student's softmax over a list.

Inputs: columns (query, positive, negative_1, ..., negative_k). Labels: the teacher's raw scores
``[t_pos, t_neg_1, ..., t_neg_k]``. With the student's logits ``s`` and temperature ``T``::

    p = softmax(t / T),  q = softmax(s / T)
    loss = mean over samples of  KL(p || q) = sum_d p_d (log p_d - log q_d)

times ``T^2`` when ``temperature_squared`` is set (Hinton et al. 2015, which keeps gradient
magnitudes comparable across temperatures). The loss is zero exactly when the student's scores
equal the teacher's (or differ by a constant per list).

Written here because sentence-transformers has no such loss: its ``ListNetLoss`` is the cross
entropy ``-sum p log q`` at temperature 1, which differs from the KL by the teacher's entropy
(so it is not zero for a perfect student) and takes no temperature. Cosine teachers produce
scores in [-1, 1], whose softmax at T = 1 is nearly uniform: without an explicit
``temperature`` the trainer uses the default for the teacher's score kind (0.05 for cosines,
1 for logits; :func:`irflow.students.spec.default_kd_temperature`) before the loss is built.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sentence_transformers.util import batch_to_device

DEFAULT_TEMPERATURE = 1.0


def kd_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    temperature: float = DEFAULT_TEMPERATURE,
    temperature_squared: bool = False,
) -> torch.Tensor:
    """The loss above for score matrices of shape (samples, list length)."""
    log_q = F.log_softmax(student.float() / temperature, dim=-1)
    log_p = F.log_softmax(teacher.float() / temperature, dim=-1)
    loss = F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)
    return loss * temperature**2 if temperature_squared else loss


class ListwiseKDLoss(torch.nn.Module):
    """KL(softmax(teacher / T) || softmax(student / T)) over each sample's documents."""

    def __init__(
        self,
        model,
        temperature: float = DEFAULT_TEMPERATURE,
        temperature_squared: bool = False,
    ):
        super().__init__()
        self.model = model
        self.temperature = temperature
        self.temperature_squared = temperature_squared
        if model.num_labels != 1:
            raise ValueError(
                f"the kd objective needs a cross-encoder with one output, got {model.num_labels}"
            )

    def scores(self, inputs, prompt=None, task=None) -> torch.Tensor:
        """Student logits, shape (samples, documents), from one forward pass over all pairs."""
        queries, columns = inputs[0], inputs[1:]
        pairs = [(q, d) for column in columns for q, d in zip(queries, column, strict=True)]
        features = self.model.preprocess(pairs, prompt=prompt, task=task)
        features = batch_to_device(features, self.model.device)
        return self.model(features)["scores"].view(len(columns), len(queries)).T

    def forward(self, inputs, labels, prompt=None, task=None) -> torch.Tensor:
        if isinstance(labels, list):
            labels = torch.stack(labels)
        expected = (len(inputs[0]), len(inputs) - 1)
        if tuple(labels.shape) != expected:
            raise ValueError(
                f"kd expects one teacher score per document, labels of shape {expected}, got "
                f"{tuple(labels.shape)}"
            )
        scores = self.scores(inputs, prompt=prompt, task=task)
        return kd_loss(scores, labels.to(scores.device), self.temperature, self.temperature_squared)

    def get_config_dict(self):
        return {"temperature": self.temperature, "temperature_squared": self.temperature_squared}


def build(model, objective) -> ListwiseKDLoss:
    return ListwiseKDLoss(
        model,
        temperature=objective.temperature or DEFAULT_TEMPERATURE,
        temperature_squared=bool(objective.temperature_squared),
    )
