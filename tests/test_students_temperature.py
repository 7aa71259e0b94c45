"""The kd temperature follows the teacher's score scale: cosines (a bi-encoder teacher) default
to T = 0.05, logits to T = 1, a given ``objective.temperature`` always wins; the trainer logs the
teacher distribution's entropy against its maximum and warns when it is near uniform."""

from __future__ import annotations

import copy
import logging
import math

import numpy as np
import pytest
import torch
from test_students_common import tiny_bi_encoder, tiny_training_set
from workflow_helpers import REPO, absolute_config

from irflow.plan import Plan
from irflow.students import StudentTrainingSpec
from irflow.students.losses import get_objective
from irflow.students.spec import KD_TEMPERATURE_BY_SCORE_KIND, default_kd_temperature
from irflow.students.train import (
    NEAR_UNIFORM,
    resolve_temperature,
    teacher_entropy,
    train_cross_encoder,
)
from irflow.training_data.artifacts import SCORE_KINDS

SCHEMA = REPO / "schemas" / "config.schema.yaml"


def spec(objective: dict) -> StudentTrainingSpec:
    return StudentTrainingSpec.from_config(
        {
            "objective": objective,
            "batch_size": 4,
            "num_negatives": 3,
            "max_length": 24,
            "max_steps": 1,
            "optimizer": {"name": "adamw", "lr": 1e-3},
            "seed": 7,
        }
    )


def test_every_score_kind_has_a_default():
    assert set(KD_TEMPERATURE_BY_SCORE_KIND) == set(SCORE_KINDS.values())
    assert default_kd_temperature(SCORE_KINDS["bi-encoder"]) == 0.05
    assert default_kd_temperature(SCORE_KINDS["cross-encoder"]) == 1.0
    assert default_kd_temperature(SCORE_KINDS["causal-lm"]) == 1.0
    assert default_kd_temperature(None) == 1.0


@pytest.mark.parametrize(("score_kind", "expected"), [("cosine", 0.05), ("logit", 1.0)])
def test_kd_default_follows_the_score_kind_and_a_given_value_wins(score_kind, expected):
    kd = get_objective("cross-encoder", "kd")
    assert resolve_temperature(spec({"name": "kd"}), kd, score_kind).objective.temperature == (
        expected
    )
    given = spec({"name": "kd", "temperature": 0.3})
    assert resolve_temperature(given, kd, score_kind).objective.temperature == 0.3
    # Objectives that do not soften the teacher's scores are left alone.
    cl = spec({"name": "cl"})
    assert resolve_temperature(cl, get_objective("cross-encoder", "cl"), score_kind) == cl


def test_teacher_entropy_by_hand():
    pos, neg = np.array([1.0]), np.array([[0.0, 0.0]])
    p = np.exp([1.0, 0.0, 0.0]) / np.exp([1.0, 0.0, 0.0]).sum()
    entropy = teacher_entropy(pos, neg, 1.0)
    assert entropy["mean"] == pytest.approx(float(-(p * np.log(p)).sum()), abs=1e-6)
    assert entropy["max"] == pytest.approx(math.log(3), abs=1e-6)
    # Cosines at T = 1 are nearly uniform; at T = 0.05 they are not.
    rng = np.random.default_rng(0)
    cos_pos, cos_neg = rng.uniform(0.5, 0.9, 50), rng.uniform(0.2, 0.6, (50, 7))
    assert teacher_entropy(cos_pos, cos_neg, 1.0)["ratio"] > NEAR_UNIFORM
    assert teacher_entropy(cos_pos, cos_neg, 0.05)["ratio"] < 0.8


@pytest.fixture(scope="module")
def init(tmp_path_factory):
    torch.set_num_threads(1)
    return tiny_bi_encoder(tmp_path_factory.mktemp("temperature") / "init")


def train(init, root, objective, score_kind):
    data = tiny_training_set(root / "data", score_kind=score_kind)
    return train_cross_encoder(
        spec(objective), data["scores"], data["queries"], data["corpus"], init,
        root / "model", None, root / "curves.jsonl", device="cpu",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("objective", "score_kind", "expected"),
    [
        ({"name": "kd"}, "cosine", 0.05),
        ({"name": "kd"}, "logit", 1.0),
        ({"name": "kd", "temperature": 2.0}, "cosine", 2.0),
    ],
)
def test_training_uses_the_default_or_the_given_temperature(
    init, tmp_path, objective, score_kind, expected
):
    stats = train(init, tmp_path, objective, score_kind)
    assert stats["spec"]["objective"]["temperature"] == expected
    assert stats["teacher_entropy"]["temperature"] == expected
    assert stats["teacher_entropy"]["max"] == pytest.approx(math.log(4), abs=1e-6)


def ours(caplog, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "irflow.students.train" and r.levelno == level]


def test_a_near_uniform_teacher_is_warned_about(init, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="irflow.students.train"):
        stats = train(init, tmp_path / "hot", {"name": "kd", "temperature": 1000.0}, "logit")
    assert stats["teacher_entropy"]["ratio"] > NEAR_UNIFORM
    warnings = ours(caplog, logging.WARNING)
    assert len(warnings) == 1 and "objective.temperature" in warnings[0].getMessage()
    assert "near uniform" in warnings[0].getMessage()
    assert any("mean entropy" in r.getMessage() for r in ours(caplog, logging.INFO))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="irflow.students.train"):
        train(init, tmp_path / "cold", {"name": "kd", "temperature": 0.05}, "logit")
    assert not ours(caplog, logging.WARNING)


def test_the_plan_puts_the_default_in_the_deciding_params():
    config = absolute_config("config.yaml")
    student = "kd-minilm-l6"  # a kd student of config.yaml (teacher: the cross-encoder)
    assert config["students"][student]["training"]["objective"]["name"] == "kd"
    cases = {}
    for teacher, temperature in (("ce-teacher", None), ("mpnet-base", None), ("mpnet-base", 0.5)):
        edited = copy.deepcopy(config)
        entry = edited["students"][student]
        entry["data"] = {**entry["data"], "teacher": teacher}
        entry["training"] = {**entry["training"], "objective": {"name": "kd"}}
        if temperature is not None:
            entry["training"]["objective"]["temperature"] = temperature
        plan = Plan.from_config(edited, SCHEMA, REPO)
        cases[(teacher, temperature)] = plan.student_params(student)["training"]["objective"]
        # The config itself is not changed.
        assert "temperature" not in entry["training"]["objective"] or temperature is not None
    assert cases[("ce-teacher", None)] == {"name": "kd", "temperature": 1.0}
    assert cases[("mpnet-base", None)] == {"name": "kd", "temperature": 0.05}
    assert cases[("mpnet-base", 0.5)] == {"name": "kd", "temperature": 0.5}
