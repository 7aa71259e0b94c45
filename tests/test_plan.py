"""The resolved plan (irflow.plan) and the guarantees it gives the workflow: config never
mutated, only deciding keys as rerun triggers, model folders as inputs, config mistakes
refused before any job in one line that never echoes a value, and no planted secret in any
output Snakemake or the jobs write."""

from __future__ import annotations

import copy
import re
import shutil

import pytest
import yaml
from workflow_helpers import (
    MODELS,
    REPO,
    SHARED_DATA,
    absolute_config,
    planned_jobs,
    snakemake,
)

from irflow.plan import ConfigError, Plan, deciding, validate

SCHEMA = REPO / "schemas" / "config.schema.yaml"
SHIPPED = ["config.yaml", *sorted(p.name for p in (REPO / "configs").glob("*.yaml"))]
# Shapes the redaction knows (a GitHub token) and a plain value under a credential-like key.
TOKEN = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4"
PLAIN_SECRET = "plain-secret-value-7731"


def _shipped(name: str) -> dict:
    return absolute_config(name if name == "config.yaml" else f"configs/{name}")


# ------------------------------------------------------------------------------------------
# The plan as a library
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SHIPPED)
def test_building_the_plan_never_mutates_the_config(name):
    config = _shipped(name)
    before = copy.deepcopy(config)
    plan = Plan.from_config(config, SCHEMA, REPO)
    plan.describe()
    for student in plan.names("students"):
        plan.student_params(student)["training"]["lr"] = "changed by a caller"
    for study in plan.names("studies"):
        plan.study_runs(study)
    assert config == before
    # Produced models are the plan's, not the config's.
    assert set(config["models"]) == set(before["models"])


def test_rules_never_write_config():
    writes = re.compile(r"config(\[[^\]]+\])+\s*=[^=]|config\.(setdefault|update|pop)\(")
    for path in sorted((REPO / "rules").glob("*.smk")) + [REPO / "Snakefile"]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not writes.search(line), f"{path.name}:{number} writes config: {line}"
            assert "validate(config" not in line, f"{path.name}:{number} validates in place"


def test_produced_models_and_study_arms_are_resolved_by_the_plan():
    plan = Plan.from_config(_shipped("ci-studies.yaml"), SCHEMA, REPO)
    config = _shipped("ci-studies.yaml")
    student = next(iter(config["students"]))
    path, rule = plan.produced_model(student)
    assert path == f"results/students/{student}/model" and rule == "train_student"
    described = plan.describe()["components"]
    assert described[f"students.{student}"]["artifacts"][path] == "train_student"
    for study in config["studies"]:
        rows = plan.study_runs(study)
        assert {arm for arm, *_ in rows} == set(config["studies"][study]["arms"])


def test_operational_keys_are_not_deciding():
    entry = {
        "description": "words",
        "lr": 1e-5,
        "training": {"checkpoint_every_steps": 5, "lr": 2, "description": "more words"},
    }
    assert deciding(entry, "students") == {"lr": 1e-5, "training": {"lr": 2}}
    # checkpoint_every_steps is operational only where the section says so.
    assert deciding({"checkpoint_every_steps": 5}) == {"checkpoint_every_steps": 5}
    plan = Plan.from_config(_shipped("ci-studies.yaml"), SCHEMA, REPO)
    for student in plan.names("students"):
        params = plan.student_params(student)
        assert "checkpoint_every_steps" not in params["training"]
        assert "description" not in yaml.safe_dump(params)


def test_reordering_keys_decides_nothing():
    config = absolute_config()
    reordered = copy.deepcopy(config)
    reordered["datasets"] = {
        name: dict(reversed(list(entry.items()))) for name, entry in config["datasets"].items()
    }
    a = Plan.from_config(config, SCHEMA, REPO)
    b = Plan.from_config(reordered, SCHEMA, REPO)
    for name in a.names("datasets"):
        assert repr(a.dataset(name)) == repr(b.dataset(name))


def test_a_model_folder_is_its_files(tmp_path):
    model = tmp_path / "model"
    (model / "1_Pooling").mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"x")
    (model / "1_Pooling" / "config.json").write_text("{}")
    (model / ".cache").mkdir()
    (model / ".cache" / "lock").write_text("")
    config = absolute_config()
    config["models"]["minilm-l6"]["path"] = str(model)
    plan = Plan.from_config(config, SCHEMA, REPO)
    assert plan.model_files("minilm-l6") == [
        f"{model}/1_Pooling/config.json",
        f"{model}/model.safetensors",
    ]


@pytest.mark.parametrize("value", ["", "  ", "/", ".", "./"])
def test_dangerous_results_dirs_are_refused(value):
    with pytest.raises(ConfigError, match="results_dir"):
        Plan.from_config(absolute_config(results_dir=value), SCHEMA, REPO)


def test_unknown_key_is_one_line_with_the_nearest_known_keys():
    with pytest.raises(ConfigError) as err:
        validate(absolute_config(retreivers={}), yaml.safe_load(SCHEMA.read_text()))
    message = str(err.value)
    assert len(message.splitlines()) == 1
    assert "'retreivers'" in message and "did you mean retrievers" in message


def test_a_refused_value_is_never_echoed():
    config = absolute_config()
    config["datasets"]["dl19"]["api_key"] = PLAIN_SECRET
    config["datasets"]["dl19"]["rel_level"] = PLAIN_SECRET
    with pytest.raises(ConfigError) as err:
        validate(config, yaml.safe_load(SCHEMA.read_text()))
    assert "api_key" in str(err.value) and "rel_level" in str(err.value)
    assert PLAIN_SECRET not in str(err.value)


def test_a_student_training_typo_is_refused_by_the_plan():
    config = _shipped("ci-studies.yaml")
    student = next(iter(config["students"]))
    config["students"][student]["training"]["epocs"] = 2
    with pytest.raises(ConfigError, match=rf"students\.{student}\.training\..*epocs"):
        Plan.from_config(config, SCHEMA, REPO)


# ------------------------------------------------------------------------------------------
# The same through Snakemake: refused before any job, nothing written
# ------------------------------------------------------------------------------------------
def _dry_run_error(tmp_path, config) -> str:
    result = snakemake(tmp_path, config, "-n", check=False)
    assert result.returncode != 0, "a bad config must stop the workflow"
    assert not (tmp_path / "results").exists(), "nothing may be written for a bad config"
    return result.stdout + result.stderr


@pytest.mark.parametrize("value", ["", "/"])
def test_dry_run_refuses_dangerous_results_dir(tmp_path, value):
    assert "results_dir" in _dry_run_error(tmp_path, absolute_config(results_dir=value))


def test_dry_run_refuses_a_student_training_typo(tmp_path):
    config = absolute_config("configs/ci-studies.yaml")
    student = next(iter(config["students"]))
    config["students"][student]["training"]["warmup_ratio_typo"] = 0.1
    message = _dry_run_error(tmp_path, config)
    assert f"students.{student}.training" in message and "warmup_ratio_typo" in message


def test_schema_error_echoes_no_secret_to_console_or_log(tmp_path):
    config = absolute_config()
    config["datasets"]["dl19"]["api_key"] = PLAIN_SECRET
    message = _dry_run_error(tmp_path, config)
    assert "api_key" in message and PLAIN_SECRET not in message
    assert len([line for line in message.splitlines() if "config:" in line]) == 1
    for path in (tmp_path / ".snakemake").rglob("*"):
        if path.is_file():
            assert PLAIN_SECRET not in path.read_text(errors="replace"), path


# ------------------------------------------------------------------------------------------
# A real run: what reruns, what does not, and where a planted secret could leak
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    if not SHARED_DATA.is_dir() or not (MODELS / "all-MiniLM-L6-v2").is_dir():
        pytest.skip("needs ../shared/data and the installed models")
    workdir = tmp_path_factory.mktemp("planted-run")
    model = workdir / "models" / "minilm"
    shutil.copytree(MODELS / "all-MiniLM-L6-v2", model)
    config = absolute_config()
    config["models"]["minilm-l6"]["path"] = str(model)
    # A token-shaped value in a description, a plain value under a credential-like key: what
    # redaction can recognise. (A plain value in a description is just text to it.)
    config["datasets"]["dl19"]["description"] = f"DL19, fetched with {TOKEN}"
    config["x-credentials"] = {"api_key": PLAIN_SECRET, "token": TOKEN}
    snakemake(workdir, config)
    snakemake(workdir, config, "--report", str(workdir / "results" / "snakemake-report.html"))
    return workdir, config, model


@pytest.mark.slow
@pytest.mark.models
def test_no_planted_secret_in_any_output(planted_run):
    workdir, _, _ = planted_run
    assert (workdir / "results" / "snakemake-report.html").is_file()
    checked = 0
    for folder in (workdir / ".snakemake", workdir / "results"):
        for path in folder.rglob("*"):
            if not path.is_file() or path.suffix in (".parquet", ".safetensors", ".npy"):
                continue
            text = path.read_bytes().decode("utf-8", errors="replace")
            assert PLAIN_SECRET not in text, path
            assert TOKEN not in text, path
            checked += 1
    assert checked > 50


@pytest.mark.slow
@pytest.mark.models
def test_editing_descriptions_reruns_nothing(planted_run):
    workdir, config, _ = planted_run
    changed = copy.deepcopy(config)
    for section in ("datasets", "models", "retrievers", "rerankers"):
        for name, entry in changed.get(section, {}).items():
            entry["description"] = "edited: this decides nothing"
            # and the keys in another order
            changed[section][name] = dict(reversed(list(entry.items())))
    changed["x-notes"] = {"anything": 1}
    result = snakemake(workdir, changed, "-n")
    assert planned_jobs(result.stdout) == {}, result.stdout[-3000:]


@pytest.mark.slow
@pytest.mark.models
def test_editing_a_model_file_reruns_exactly_its_dependents(planted_run):
    workdir, config, model = planted_run
    pooling = model / "1_Pooling" / "config.json"
    # An edit (still valid JSON): Snakemake compares small inputs by checksum, so a mere touch
    # would rerun nothing, rightly.
    pooling.write_text(pooling.read_text() + "\n")
    jobs = planned_jobs(snakemake(workdir, config, "-n").stdout)
    # MiniLM encodes the corpus for the dense retriever and reranks the given candidates.
    assert jobs == {
        "encode_corpus": 1,
        "dense_retrieve": 1,
        "rerank_bi_encoder": 1,
        "evaluate_run": 2,
        "baselines_table": 1,
        "provenance_manifest": 1,
        "cost_table": 1,
        "report_html": 1,
        "all": 1,
    }, jobs
    # The job's provenance record holds the digests of the files it read.
    record = next((workdir / "results/provenance/encode_corpus").rglob("*.json")).read_text()
    assert "1_Pooling/config.json" in record


# ------------------------------------------------------------------------------------------
# Seed replicates
# ------------------------------------------------------------------------------------------
def test_seeds_make_one_student_per_seed_sharing_upstream():
    plan = Plan.from_config(_shipped("demo.yaml"), SCHEMA, REPO)
    assert plan.replicates("emb-first") == [f"emb-first.seed{k}" for k in (1, 2, 3)]
    assert plan.replicates("emb-guide") == ["emb-guide"]
    assert "emb-first" not in plan.names("students")
    params = [plan.student_params(name) for name in plan.replicates("emb-first")]
    assert [p["seed"] for p in params] == [1, 2, 3]
    assert [p["training"]["seed"] for p in params] == [1, 2, 3]
    # Everything but the seed is shared: the same init, data and training settings.
    for p in params:
        p["training"].pop("seed"), p.pop("seed")
    assert params[0] == params[1] == params[2]
    rows = plan.study_table_rows("distilled-embedder")
    seeded = [row for row in rows if row[0] == "emb-first"]
    assert [(row[1], row[4]) for row in seeded] == [
        ("emb-first.seed1", 1),
        ("emb-first.seed2", 2),
        ("emb-first.seed3", 3),
        ("emb-first.untrained", None),  # the init: one row however many seeds
    ]
    assert plan.study_runs("distilled-embedder") == [row[:4] for row in rows]


def test_study_seeds_replicate_every_arm_and_conflicts_are_refused():
    config = _shipped("demo.yaml")
    del config["students"]["emb-first"]["seeds"]
    config["studies"]["distilled-embedder"]["seeds"] = [5, 6]
    plan = Plan.from_config(config, SCHEMA, REPO)
    assert plan.replicates("emb-guide") == ["emb-guide.seed5", "emb-guide.seed6"]
    assert plan.replicates("emb-first") == ["emb-first.seed5", "emb-first.seed6"]
    config["students"]["emb-first"]["seeds"] = [1, 2]
    with pytest.raises(ConfigError, match=r"studies.distilled-embedder.seeds \[5, 6\] disagrees"):
        Plan.from_config(config, SCHEMA, REPO)
    config = _shipped("demo.yaml")
    config["students"]["emb-first"]["training"]["seed"] = 9
    with pytest.raises(ConfigError, match="training.seed and students.emb-first.seeds both"):
        Plan.from_config(config, SCHEMA, REPO)
    config = _shipped("demo.yaml")
    config["baselines"][0]["rerankers"] = ["emb-first"]
    config["rerankers"] = {}
    with pytest.raises(ConfigError, match="trained once per seed .* emb-first.seed1, emb-first"):
        Plan.from_config(config, SCHEMA, REPO)
