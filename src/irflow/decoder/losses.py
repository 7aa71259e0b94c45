"""Losses of the two tasks and PCGrad.

Written here rather than taken from sentence-transformers: its losses take a
``SentenceTransformer`` and text batches, while these act on already pooled tensors of a peft
decoder whose two tasks must be backpropagated separately (for the gradient diagnostics and
PCGrad). Each is a few lines of standard formulas.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def info_nce(
    queries: torch.Tensor,
    documents: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 0.05,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of each query over all documents of the batch (in-batch + hard negatives).

    ``queries``: ``(B, D)``, ``documents``: ``(N, D)``, both L2-normalised; ``targets``: ``(B,)``
    index of each query's positive among the documents; ``exclude``: ``(B, N)`` bool of
    documents that must not count as negatives (another copy of a known positive).
    """
    logits = queries @ documents.T / temperature
    if exclude is not None:
        logits = logits.masked_fill(exclude, float("-inf"))
    return F.cross_entropy(logits, targets)


def matryoshka_info_nce(
    queries: torch.Tensor,
    documents: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    dims: Sequence[int] | None,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE averaged over the leading ``dims`` (renormalised) and the full dimension."""
    full = queries.shape[-1]
    sizes = sorted({min(int(d), full) for d in (dims or [])} | {full})
    losses = []
    for size in sizes:
        q = F.normalize(queries[:, :size], dim=-1) if size < full else queries
        d = F.normalize(documents[:, :size], dim=-1) if size < full else documents
        losses.append(info_nce(q, d, targets, temperature, exclude))
    return torch.stack(losses).mean()


def bce(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on the yes/no score (a logit: ``sigmoid(score)`` = P(yes))."""
    return F.binary_cross_entropy_with_logits(scores, labels.to(scores.dtype))


def ranknet(scores: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Mean ``log(1 + exp(-(s_i - s_j)))`` over pairs of one group with label_i > label_j."""
    same = groups[:, None] == groups[None, :]
    better = labels[:, None] > labels[None, :]
    pairs = same & better
    if not bool(pairs.any()):
        return scores.sum() * 0.0
    diff = scores[:, None] - scores[None, :]
    return F.softplus(-diff[pairs]).mean()


def pcgrad(
    grads: Sequence[torch.Tensor], generator: torch.Generator | None = None
) -> tuple[torch.Tensor, int]:
    """Projecting Conflicting Gradients (Yu et al., 2020): returns (combined gradient, number of
    projections made).

    Each task's gradient is projected, one other task at a time in a random order, onto the
    normal plane of every *original* task gradient it conflicts with (negative dot product):
    ``g_i <- g_i - (g_i . g_j) / |g_j|^2 * g_j``; the projected gradients are summed. With two
    tasks the order does not matter.
    """
    originals = [g.detach() for g in grads]
    out = torch.zeros_like(originals[0])
    projections = 0
    for i, g in enumerate(originals):
        projected = g.clone()
        others = [j for j in range(len(originals)) if j != i]
        if len(others) > 1:
            order = torch.randperm(len(others), generator=generator).tolist()
            others = [others[k] for k in order]
        for j in others:
            dot = torch.dot(projected, originals[j])
            norm_sq = torch.dot(originals[j], originals[j])
            if dot < 0 and norm_sq > 0:
                projected = projected - dot / norm_sq * originals[j]
                projections += 1
        out += projected
    return out, projections


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine of two flat gradients; NaN when either is zero."""
    na, nb = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
    if na == 0 or nb == 0:
        return float("nan")
    return float(torch.dot(a, b) / (na * nb))
