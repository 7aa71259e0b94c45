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
:mod:`.train`               :func:`train_cross_encoder`, :func:`train_bi_encoder`,
                            :func:`save_untrained`
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


def train_cross_encoder(*args, **kwargs):
    from irflow.students.train import train_cross_encoder as train

    return train(*args, **kwargs)


def train_bi_encoder(*args, **kwargs):
    from irflow.students.train import train_bi_encoder as train

    return train(*args, **kwargs)


def save_untrained(*args, **kwargs):
    from irflow.students.train import save_untrained as save

    return save(*args, **kwargs)


train_cross_encoder.__doc__ = "See :func:`irflow.students.train.train_cross_encoder`."
train_bi_encoder.__doc__ = "See :func:`irflow.students.train.train_bi_encoder`."
save_untrained.__doc__ = "See :func:`irflow.students.train.save_untrained`."

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
]
