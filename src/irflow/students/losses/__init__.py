"""Training objectives: a registry from the config's names to loss builders, one loss per file.

=============  =============  ==========================================  =====================
kind           name           loss                                        data (:mod:`..data`)
=============  =============  ==========================================  =====================
cross-encoder  ``bce``        :mod:`.bce` (sentence-transformers)         ``pairs``
cross-encoder  ``cl``         :mod:`.contrastive` (s-t, in-batch off)     ``ntuple``
cross-encoder  ``kd``         :mod:`.kd` (written here)                   ``ntuple_scores``
cross-encoder  ``margin_mse`` :mod:`.margin_mse` (sentence-transformers)  ``ntuple_scores``
bi-encoder     ``margin_mse`` :mod:`.bi_margin_mse` (s-t, ± Matryoshka)   ``ntuple_scores``
bi-encoder     ``infonce``    :mod:`.bi_infonce` (s-t MNRL, ± Matryoshka)  ``ntuple``
bi-encoder     ``cached_infonce``  :mod:`.bi_infonce` (s-t CachedMNRL)    ``ntuple``
=============  =============  ==========================================  =====================

Data formats, with ``k = num_negatives``: ``pairs`` has columns (query, document, label) with
one row per (query, positive) and (query, negative) pair, label 1.0 or 0.0; ``ntuple`` has
columns (query, positive, negative_1, ..., negative_k); ``ntuple_scores`` adds ``label``, the
teacher's raw scores ``[pos, neg_1, ..., neg_k]`` (float32).

This module imports nothing heavy: the workflow can list and check names without torch; the
loss modules are imported only by :func:`build_loss`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

KINDS = ("cross-encoder", "bi-encoder")


@dataclass(frozen=True)
class Objective:
    kind: str
    name: str
    builder: str  # "module:function" under irflow.students.losses
    data: str  # pairs | ntuple | ntuple_scores
    params: tuple[str, ...]  # ObjectiveSpec fields this objective takes
    uses_teacher: bool

    def build(self, model, spec):
        module, function = self.builder.split(":")
        return getattr(importlib.import_module(f"{__name__}.{module}"), function)(model, spec)


_MATRYOSHKA = ("matryoshka_dims", "matryoshka_weights")
OBJECTIVES: dict[str, dict[str, Objective]] = {
    "cross-encoder": {
        o.name: o
        for o in (
            Objective("cross-encoder", "bce", "bce:build", "pairs", (), False),
            Objective(
                "cross-encoder",
                "cl",
                "contrastive:build",
                "ntuple",
                ("temperature", "in_batch_negatives"),
                False,
            ),
            Objective(
                "cross-encoder",
                "kd",
                "kd:build",
                "ntuple_scores",
                ("temperature", "temperature_squared"),
                True,
            ),
            Objective("cross-encoder", "margin_mse", "margin_mse:build", "ntuple_scores", (), True),
        )
    },
    "bi-encoder": {
        o.name: o
        for o in (
            Objective(
                "bi-encoder",
                "margin_mse",
                "bi_margin_mse:build",
                "ntuple_scores",
                ("similarity", *_MATRYOSHKA),
                True,
            ),
            Objective(
                "bi-encoder",
                "infonce",
                "bi_infonce:build",
                "ntuple",
                ("temperature", "similarity", *_MATRYOSHKA),
                False,
            ),
            Objective(
                "bi-encoder",
                "cached_infonce",
                "bi_infonce:build_cached",
                "ntuple",
                ("temperature", "similarity", "mini_batch_size", *_MATRYOSHKA),
                False,
            ),
        )
    },
}


def get_objective(kind: str, spec_or_name) -> Objective:
    """The registered objective of a model kind, its parameters checked.

    ``spec_or_name`` is an :class:`~irflow.students.spec.ObjectiveSpec` or a name. Raises
    :class:`ValueError` listing the allowed names for an unknown one, and naming the parameter
    for one the objective does not take.
    """
    if kind not in OBJECTIVES:
        raise ValueError(f"unknown student kind {kind!r}; allowed: {list(KINDS)}")
    name = spec_or_name if isinstance(spec_or_name, str) else spec_or_name.name
    allowed = OBJECTIVES[kind]
    if name not in allowed:
        raise ValueError(f"unknown {kind} objective {name!r}; allowed: {sorted(allowed)}")
    objective = allowed[name]
    if not isinstance(spec_or_name, str):
        extra = sorted(spec_or_name.given() - set(objective.params))
        if extra:
            raise ValueError(
                f"{kind} objective {name!r} takes no parameter {extra[0]!r}; it takes: "
                f"{list(objective.params) or 'none'}"
            )
    return objective


def build_loss(kind: str, model, spec):
    """The loss module for ``spec`` (an ObjectiveSpec) on ``model``."""
    return get_objective(kind, spec).build(model, spec)
