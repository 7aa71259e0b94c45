"""Each objective against a hand computation on a tiny batch; the objective registry.

The student's raw scores (cross-encoder logits, bi-encoder embeddings) come from the model's
own inference calls (``CrossEncoder.predict``, ``SentenceTransformer.encode``); the loss is
then computed here in float64 NumPy from its formula and compared with the loss module's value
(up to float32 rounding: the two paths batch and pad the texts differently).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_students_common import tiny_bi_encoder

from irflow.students.losses import OBJECTIVES, build_loss, get_objective
from irflow.students.losses.kd import kd_loss
from irflow.students.spec import ObjectiveSpec

QUERIES = ["cat dog", "river law court", "gene drug"]
POSITIVES = ["the cat and the dog", "a river in the city", "gene of a drug trial"]
NEGATIVES = [
    ["fire water", "sun moon star"],
    ["protein cell", "the law of the court is"],
    ["heart brain blood", "bird fish tree"],
]
TEACHER = np.array([[3.0, 1.0, -0.5], [2.0, 2.5, 0.0], [0.5, -1.0, -2.0]], dtype=np.float32)
COLUMNS = [QUERIES, POSITIVES, *[[n[i] for n in NEGATIVES] for i in range(2)]]
RTOL = 2e-5


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from sentence_transformers import CrossEncoder, SentenceTransformer

    torch.set_num_threads(1)
    folder = tiny_bi_encoder(tmp_path_factory.mktemp("models") / "bi")
    torch.manual_seed(3)
    cross = CrossEncoder(str(folder), num_labels=1, device="cpu")
    cross.eval()
    bi = SentenceTransformer(str(folder), device="cpu")
    bi.eval()
    return {"cross": cross, "bi": bi}


def logits(cross) -> np.ndarray:
    """Student logits, shape (3 samples, 3 documents), from CrossEncoder.predict."""
    docs = [[p, *n] for p, n in zip(POSITIVES, NEGATIVES, strict=True)]
    pairs = [(q, d) for q, row in zip(QUERIES, docs, strict=True) for d in row]
    scores = cross.predict(pairs, activation_fn=torch.nn.Identity(), convert_to_numpy=True)
    return scores.astype(np.float64).reshape(3, 3)


def logsumexp(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=-1, keepdims=True)
    return (top + np.log(np.exp(x - top).sum(axis=-1, keepdims=True)))[..., 0]


def softmax(x: np.ndarray) -> np.ndarray:
    return np.exp(x - logsumexp(x)[..., None])


def value(loss) -> float:
    return float(loss.detach())


# ---------------------------------------------------------------------------------------------
# Cross-encoder objectives
# ---------------------------------------------------------------------------------------------
def test_bce_equals_hand_computation(models):
    s = logits(models["cross"])
    y = np.array([[1.0, 0.0, 0.0]] * 3)
    sig = 1 / (1 + np.exp(-s))
    expected = -np.mean(y * np.log(sig) + (1 - y) * np.log(1 - sig))
    loss = build_loss("cross-encoder", models["cross"], ObjectiveSpec("bce"))
    queries = [q for q in QUERIES for _ in range(3)]
    documents = [d for p, n in zip(POSITIVES, NEGATIVES, strict=True) for d in (p, *n)]
    got = loss([queries, documents], torch.tensor(y.reshape(-1), dtype=torch.float32))
    assert value(got) == pytest.approx(expected, rel=RTOL)


def test_cross_encoder_margin_mse_equals_hand_computation(models):
    s = logits(models["cross"])
    t = TEACHER.astype(np.float64)
    margins = s[:, :1] - s[:, 1:]
    expected = np.mean((margins - (t[:, :1] - t[:, 1:])) ** 2)
    loss = build_loss("cross-encoder", models["cross"], ObjectiveSpec("margin_mse"))
    got = loss(COLUMNS, [torch.tensor(row) for row in TEACHER])
    assert value(got) == pytest.approx(expected, rel=RTOL)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_cl_is_infonce_over_the_positive_and_its_negatives(models, temperature):
    s = logits(models["cross"]) / temperature
    expected = -np.mean(s[:, 0] - logsumexp(s))
    spec = ObjectiveSpec("cl", temperature=temperature)
    loss = build_loss("cross-encoder", models["cross"], spec)
    got = loss(COLUMNS, torch.zeros(3))
    assert value(got) == pytest.approx(expected, rel=RTOL)


@pytest.mark.parametrize(("temperature", "squared"), [(1.0, False), (2.0, False), (2.0, True)])
def test_kd_equals_hand_computation(models, temperature, squared):
    s = logits(models["cross"])
    p = softmax(TEACHER.astype(np.float64) / temperature)
    log_q = s / temperature - logsumexp(s / temperature)[:, None]
    expected = np.mean(np.sum(p * (np.log(p) - log_q), axis=1))
    if squared:
        expected *= temperature**2
    spec = ObjectiveSpec("kd", temperature=temperature, temperature_squared=squared)
    loss = build_loss("cross-encoder", models["cross"], spec)
    got = loss(COLUMNS, [torch.tensor(row) for row in TEACHER])
    assert value(got) == pytest.approx(expected, rel=RTOL)


def test_kd_of_a_two_document_list_by_hand():
    # Teacher indifferent (p = 1/2, 1/2); student softmax (3/4, 1/4):
    # KL = 1/2 ln((1/2)/(3/4)) + 1/2 ln((1/2)/(1/4)) = 1/2 ln(4/3).
    student = torch.tensor([[math.log(3.0), 0.0]])
    teacher = torch.tensor([[5.0, 5.0]])
    assert value(kd_loss(student, teacher)) == pytest.approx(0.5 * math.log(4 / 3), rel=1e-6)
    # At T = 2 the student's softmax is (sqrt 3, 1) / (sqrt 3 + 1).
    q = np.array([math.sqrt(3), 1.0]) / (math.sqrt(3) + 1)
    by_hand = 0.5 * math.log(0.5 / q[0]) + 0.5 * math.log(0.5 / q[1])
    assert value(kd_loss(student, teacher, 2.0)) == pytest.approx(by_hand, rel=1e-6)
    assert value(kd_loss(student, teacher, 2.0, True)) == pytest.approx(4 * by_hand, rel=1e-6)


def test_kd_is_zero_when_the_student_is_the_teacher(models):
    loss = build_loss("cross-encoder", models["cross"], ObjectiveSpec("kd", temperature=0.7))
    with torch.no_grad():
        own = loss.scores(COLUMNS)
    assert value(loss(COLUMNS, list(own))) == 0.0
    scores = torch.tensor(TEACHER)
    assert value(kd_loss(scores, scores, 0.3)) == 0.0
    assert value(kd_loss(scores, scores, 3.0, True)) == 0.0
    # And positive for any other student.
    assert value(kd_loss(scores.flip(-1), scores)) > 0.0


def test_kd_refuses_labels_of_the_wrong_shape(models):
    loss = build_loss("cross-encoder", models["cross"], ObjectiveSpec("kd"))
    with pytest.raises(ValueError, match=r"labels of shape \(3, 3\)"):
        loss(COLUMNS, torch.zeros(3, 2))


# ---------------------------------------------------------------------------------------------
# Bi-encoder objectives
# ---------------------------------------------------------------------------------------------
def embed(bi, texts: list[str], dim: int | None = None) -> np.ndarray:
    emb = bi.encode(texts, convert_to_numpy=True).astype(np.float64)
    if dim is not None:
        emb = emb[:, :dim]
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def features(bi):
    return [bi.preprocess(column) for column in COLUMNS]


def margin_mse_by_hand(bi, dim=None) -> float:
    q, pos = embed(bi, QUERIES, dim), embed(bi, POSITIVES, dim)
    negs = [embed(bi, [n[i] for n in NEGATIVES], dim) for i in range(2)]
    student = np.stack([np.sum(q * pos, 1) - np.sum(q * neg, 1) for neg in negs], axis=1)
    t = TEACHER.astype(np.float64)
    return float(np.mean((student - (t[:, :1] - t[:, 1:])) ** 2))


def test_bi_encoder_margin_mse_equals_hand_computation(models):
    loss = build_loss("bi-encoder", models["bi"], ObjectiveSpec("margin_mse"))
    got = loss(features(models["bi"]), torch.tensor(TEACHER))
    assert value(got) == pytest.approx(margin_mse_by_hand(models["bi"]), rel=RTOL)


def test_matryoshka_margin_mse_is_the_weighted_sum_over_dimensions(models):
    spec = ObjectiveSpec("margin_mse", matryoshka_dims=(32, 8), matryoshka_weights=(1.0, 0.5))
    loss = build_loss("bi-encoder", models["bi"], spec)
    expected = margin_mse_by_hand(models["bi"], 32) + 0.5 * margin_mse_by_hand(models["bi"], 8)
    got = loss(features(models["bi"]), torch.tensor(TEACHER))
    assert value(got) == pytest.approx(expected, rel=RTOL)


@pytest.mark.parametrize("name", ["infonce", "cached_infonce"])
def test_infonce_uses_in_batch_and_hard_negatives(models, name):
    bi = models["bi"]
    q = embed(bi, QUERIES)
    docs = np.concatenate(
        [embed(bi, POSITIVES), *[embed(bi, [n[i] for n in NEGATIVES]) for i in range(2)]]
    )  # rows: 3 positives, then the 3 first negatives, then the 3 second negatives
    sim = q @ docs.T / 0.1
    expected = -np.mean(sim[np.arange(3), np.arange(3)] - logsumexp(sim))
    extra = {"mini_batch_size": 2} if name == "cached_infonce" else {}
    loss = build_loss("bi-encoder", bi, ObjectiveSpec(name, temperature=0.1, **extra))
    got = loss(features(bi), None)
    assert value(got) == pytest.approx(expected, rel=RTOL)


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------
def test_registry_names_and_errors():
    assert sorted(OBJECTIVES["cross-encoder"]) == ["bce", "cl", "kd", "margin_mse"]
    assert sorted(OBJECTIVES["bi-encoder"]) == ["cached_infonce", "infonce", "margin_mse"]
    with pytest.raises(ValueError, match=r"allowed: \['bce', 'cl', 'kd', 'margin_mse'\]"):
        get_objective("cross-encoder", "listnet")
    with pytest.raises(ValueError, match=r"allowed: \['cached_infonce', 'infonce', 'margin_mse'"):
        get_objective("bi-encoder", ObjectiveSpec("kd"))
    with pytest.raises(ValueError, match="takes no parameter 'temperature'"):
        get_objective("cross-encoder", ObjectiveSpec("bce", temperature=2.0))
    with pytest.raises(ValueError, match="takes no parameter 'matryoshka_dims'"):
        get_objective("cross-encoder", ObjectiveSpec("kd", matryoshka_dims=(8,)))
    with pytest.raises(ValueError, match="unknown student kind"):
        get_objective("colbert", "kd")


def test_matryoshka_dims_are_checked_against_the_model(models):
    with pytest.raises(ValueError, match=r"\[64\] exceed the model's embedding dimension 32"):
        build_loss("bi-encoder", models["bi"], ObjectiveSpec("margin_mse", matryoshka_dims=(64,)))
    with pytest.raises(ValueError, match="'dot' cannot be combined with matryoshka_dims"):
        build_loss(
            "bi-encoder",
            models["bi"],
            ObjectiveSpec("margin_mse", similarity="dot", matryoshka_dims=(8,)),
        )
