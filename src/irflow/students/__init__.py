"""Students: GUIDE layer-selection initialisation, objectives, optimizers and training.

==========================  ===============================================================
module                      what
==========================  ===============================================================
:mod:`.guide`               layer selection (:func:`select_layers`) and shallower student
                            checkpoints of a parent (:func:`build_student`,
                            :func:`init_student` = both on the parent's depth)
:mod:`.spec`                the training specification from the config
                            (:class:`StudentTrainingSpec`)
:mod:`.losses`              objective registry (cross-encoder: bce, cl, kd, margin_mse;
                            bi-encoder: margin_mse, infonce, cached_infonce), one file each
:mod:`.optim`               optimizers by name (adamw, lion, adamw8bit, lion8bit) or class
:mod:`.data`                samples of a scores Parquet with their texts, as datasets
:mod:`.train`               :func:`train_student` (:func:`train_cross_encoder`,
                            :func:`train_bi_encoder`), :func:`save_untrained`
==========================  ===============================================================

Importing this package is cheap (no torch): the training functions are imported on first use.
"""

from irflow.students.guide import (
    STRATEGIES,
    build_student,
    init_student,
    model_depth,
    select_layers,
)
from irflow.students.losses import OBJECTIVES, get_objective
from irflow.students.optim import OPTIMIZERS
from irflow.students.spec import StudentTrainingSpec

_LAZY = ("save_untrained", "train_bi_encoder", "train_cross_encoder", "train_student")


def __getattr__(name: str):
    # The training functions import torch and transformers; load them on first use only.
    if name in _LAZY:
        from irflow.students import train

        return getattr(train, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "OBJECTIVES",
    "OPTIMIZERS",
    "STRATEGIES",
    "StudentTrainingSpec",
    "build_student",
    "get_objective",
    "init_student",
    "model_depth",
    "save_untrained",
    "select_layers",
    "train_bi_encoder",
    "train_cross_encoder",
    "train_student",
]
