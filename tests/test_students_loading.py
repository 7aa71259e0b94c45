"""A student initialised from a hub id loads at its model entry's pinned ``revision`` with its
``trust_remote_code``: from the rule scripts through the training entry points to the
sentence-transformers loaders (the loaders are replaced by recorders: no download); and the
plan lists the hub models that are not pinned to a commit."""

from __future__ import annotations

import json
import runpy
from types import SimpleNamespace

import pytest
from workflow_helpers import REPO

from irflow.students import StudentTrainingSpec
from irflow.students import train as train_module

SPEC = StudentTrainingSpec.from_config({"objective": {"name": "bce"}, "seed": 3, "max_length": 32})
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class Recorder:
    """Stands in for CrossEncoder / SentenceTransformer: records how it was called."""

    calls: list = []

    def __init__(self, name_or_path, **kwargs):
        Recorder.calls.append((type(self).__name__, name_or_path, kwargs))
        self.num_labels = kwargs.get("num_labels", 1)
        self.max_seq_length = 0


class CrossEncoder(Recorder):
    pass


class SentenceTransformer(Recorder):
    pass


@pytest.fixture
def loaders(monkeypatch):
    import sentence_transformers

    Recorder.calls = []
    monkeypatch.setattr(sentence_transformers, "CrossEncoder", CrossEncoder)
    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", SentenceTransformer)
    return Recorder.calls


@pytest.mark.parametrize("kind", ["cross-encoder", "bi-encoder"])
def test_the_revision_and_remote_code_flag_reach_the_loader(loaders, kind):
    train_module.load_student(
        kind, "org/model", SPEC, "cpu", revision=COMMIT, trust_remote_code=True
    )
    [(cls, name, kwargs)] = loaders
    assert cls == {"cross-encoder": "CrossEncoder", "bi-encoder": "SentenceTransformer"}[kind]
    assert name == "org/model"
    assert kwargs["revision"] == COMMIT and kwargs["trust_remote_code"] is True
    loaders.clear()
    train_module.load_student(kind, "some/folder", SPEC, "cpu")
    assert loaders[0][2]["revision"] is None and loaders[0][2]["trust_remote_code"] is False


def test_train_from_config_passes_them_on(monkeypatch):
    seen = {}
    monkeypatch.setattr(train_module, "train_student", lambda *a, **k: seen.update(k) or {})
    train_module.train_from_config(
        "cross-encoder", {"objective": {"name": "bce"}}, "org/model", revision=COMMIT,
        trust_remote_code=True, out_dir="x",
    )  # fmt: skip
    assert seen["revision"] == COMMIT and seen["trust_remote_code"] is True
    assert seen["init_dir"] == "org/model" and seen["out_dir"] == "x"


def fake_snakemake(tmp_path, init: dict, kind="cross-encoder"):
    class Resources(dict):
        __getattr__ = dict.get

    return SimpleNamespace(
        threads=1,
        log=[],
        wildcards=SimpleNamespace(student="s"),
        params=SimpleNamespace(
            student={"kind": kind, "init": init, "training": {"objective": {"name": "bce"}},
                     "seed": 5},
            checkpoints=str(tmp_path / "ckpt"),
            kind=kind, init=init, seed=5, max_length=None,
        ),
        input=SimpleNamespace(data="d.parquet", queries="q.parquet", corpus="c.parquet"),
        output=SimpleNamespace(
            model=str(tmp_path / "model"), curves=str(tmp_path / "c.jsonl"),
            stats=str(tmp_path / "stats.json"),
        ),
        resources=Resources(checkpoint_every_steps=0),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("init", "revision"),
    [
        ({"name": "hub", "hf_id": "org/model", "revision": COMMIT, "trust_remote_code": True},
         COMMIT),
        ({"name": "local", "path": "/some/folder"}, None),
    ],
)  # fmt: skip
def test_the_rule_scripts_pass_the_init_entry(monkeypatch, tmp_path, init, revision):
    from irflow import job
    from irflow.models import ModelRef

    monkeypatch.setattr(job, "start", lambda snakemake: None)
    monkeypatch.setattr(ModelRef, "name_or_path", property(lambda self: self.path or self.hf_id))
    calls = []
    monkeypatch.setattr(train_module, "train_from_config", lambda **k: calls.append(k) or {})
    monkeypatch.setattr(train_module, "save_untrained", lambda *a, **k: calls.append(k) or {})
    for script in ("train_student", "untrained_student"):
        runpy.run_path(
            str(REPO / "workflow_scripts" / f"{script}.py"),
            init_globals={"snakemake": fake_snakemake(tmp_path, init)},
        )
    trained, untrained = calls
    assert trained["revision"] == revision and untrained["revision"] == revision
    remote = bool(init.get("trust_remote_code"))
    assert trained["trust_remote_code"] is remote and untrained["trust_remote_code"] is remote
    assert trained["init_dir"] == init.get("path", init.get("hf_id"))
    assert json.loads((tmp_path / "stats.json").read_text())["student"] == "s"


def test_the_plan_lists_unpinned_hub_models():
    import yaml

    from irflow.plan import Plan

    config = yaml.safe_load((REPO / "configs/studies/optimizers.yaml").read_text())
    config["models"] = {
        "pinned": {"hf_id": "org/a", "revision": COMMIT},
        "branch": {"hf_id": "org/b", "revision": "main"},
        "none": {"hf_id": "org/c"},
        **config["models"],
    }
    plan = Plan.from_config(config, REPO / "schemas" / "config.schema.yaml", REPO)
    unpinned = {name: (hf_id, rev) for name, hf_id, rev in plan.unpinned_models()}
    assert "pinned" not in unpinned
    assert unpinned["branch"] == ("org/b", "main") and unpinned["none"] == ("org/c", None)
