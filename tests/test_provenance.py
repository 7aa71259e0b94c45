"""Per-artifact provenance: records for every artifact, with correct digests, that follow a change;
secrets never reach a log, a record or the report."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from report_fixtures import tiny_beir, tiny_config
from workflow_helpers import planned_jobs, snakemake

from irflow import provenance

# Token-shaped, and planted both in the environment and in the config (a dataset description,
# which reaches the params of the data rules and the configuration shown in the report).
TOKEN = "hf_" + "Q7rT2vX9kLm4Np8Zs1Wd6Yb3Hc5Jf0Ge"
SECRET_ENV = {"HF_TOKEN": TOKEN, "IRFLOW_TEST_API_KEY": "s3cr3t-" + "value-" + "1234567"}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _dir_digest(root: Path) -> str:
    """The documented directory digest, written out independently of irflow.provenance."""
    lines = "".join(
        f"{p.relative_to(root).as_posix()}\0{_sha(p)}\n"
        for p in sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix())
        if p.is_file() and p.name != ".snakemake_timestamp"
    )
    return hashlib.sha256(lines.encode()).hexdigest()


# ------------------------------------------------------------------------------------------
# Unit level
# ------------------------------------------------------------------------------------------
def test_directory_digest_is_over_sorted_relative_paths_and_contents(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.bin").write_bytes(b"\x00\x01")
    (tmp_path / "a.txt").write_text("hello\n")
    (tmp_path / ".snakemake_timestamp").write_text("")  # Snakemake's marker: not content
    expected = hashlib.sha256(
        (
            "a.txt\0" + hashlib.sha256(b"hello\n").hexdigest() + "\n"
            "b/x.bin\0" + hashlib.sha256(b"\x00\x01").hexdigest() + "\n"
        ).encode()
    ).hexdigest()
    digest, size, count = provenance.directory_digest(tmp_path)
    assert (digest, size, count) == (expected, 8, 2)
    entry = provenance.describe_path(tmp_path, "index")
    assert entry == {
        "path": str(tmp_path),
        "name": "index",
        "kind": "directory",
        "size": 8,
        "files": 2,
        "sha256": expected,
    }
    assert provenance.describe_path(tmp_path / "nope")["kind"] == "missing"


def test_record_path_mirrors_the_log_path():
    path = provenance.record_path(
        "res", "res/logs/evaluate_run/dl19/first-stage/bm25.log", "evaluate_run", "x"
    )
    assert path == Path("res/provenance/evaluate_run/dl19/first-stage/bm25.json")
    # No log under <results>/logs: the rule and wildcards name it.
    assert provenance.record_path("res", None, "r", "a/b") == Path("res/provenance/r/a/b.json")


def test_redaction_by_key_name_environment_value_and_token_shape(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "abcdefgh12345678")
    monkeypatch.setenv("SHORT_KEY", "1")  # too short to search for: must not blank every "1"
    value = {
        "hf_token": "anything",
        "db_password": "pw",
        "nested": [{"aws_secret_access_key": "k"}, "uses abcdefgh12345678 inside"],
        "note": f"token {TOKEN} here",
        "count": 1,
        "text": "1 and 11",
        "key": "a plain key name stays",
        "max_tokens": 5,
    }
    assert provenance.redact(value) == {
        "hf_token": "[REDACTED]",
        "db_password": "[REDACTED]",
        "nested": [{"aws_secret_access_key": "[REDACTED]"}, "uses [REDACTED] inside"],
        "note": "token [REDACTED] here",
        "count": 1,
        "text": "1 and 11",
        "key": "a plain key name stays",
        "max_tokens": 5,
    }


def test_json_safe_turns_params_into_plain_values(tmp_path):
    import numpy as np

    value = {"p": tmp_path, "s": {3, 1}, "t": (1, 2), "f": float("nan"), "n": np.float32(0.5)}
    assert provenance.json_safe(value) == {
        "p": str(tmp_path),
        "s": [1, 3],
        "t": [1, 2],
        "f": "nan",
        "n": 0.5,
    }


JOB_SCRIPT = """
import logging, sys
from pathlib import Path
from irflow import job

class Smk:
    pass

smk = Smk()
out = Path(sys.argv[1])
smk.rule = "demo_rule"
smk.log = [str(out / "results/logs/demo_rule/k.log")]
smk.input = []
smk.output = [str(out / "results/out.txt")]
smk.params = {"description": "uses " + sys.argv[2], "auth_token": "xyz", "k1": 0.9}
smk.wildcards = {"key": "k"}
smk.threads = 1
smk.config = {"results_dir": str(out / "results"), "seed": 7}
smk.scriptdir = str(out)
Path(smk.log[0]).parent.mkdir(parents=True)
job.start(smk)
logging.getLogger("demo").info("the secret is %s", sys.argv[2])
print("stray stderr " + sys.argv[2], file=sys.stderr)
Path(smk.output[0]).write_text("done\\n")
if sys.argv[3] == "fail":
    raise RuntimeError("job failed after writing its output")
"""


@pytest.mark.parametrize("outcome", ["ok", "fail"])
def test_job_start_logs_redacted_and_records_only_success(tmp_path, outcome):
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(JOB_SCRIPT))
    env = {**os.environ, **SECRET_ENV}
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path), TOKEN, outcome],
        env=env,
        capture_output=True,
        text=True,
    )
    assert (done.returncode == 0) == (outcome == "ok"), done.stderr
    log = (tmp_path / "results/logs/demo_rule/k.log").read_text()
    assert TOKEN not in log and "the secret is [REDACTED]" in log
    assert "stray stderr [REDACTED]" in log
    record_file = tmp_path / "results/provenance/demo_rule/k.json"
    if outcome == "fail":
        assert not record_file.exists()
        return
    text = record_file.read_text()
    assert TOKEN not in text and SECRET_ENV["IRFLOW_TEST_API_KEY"] not in text
    record = json.loads(text)
    assert record["params"] == {
        "description": "uses [REDACTED]",
        "auth_token": "[REDACTED]",
        "k1": 0.9,
    }
    assert record["rule"] == "demo_rule" and record["seed"] == 7 and record["threads"] == 1
    (output,) = record["outputs"]
    assert output["sha256"] == hashlib.sha256(b"done\n").hexdigest() and output["size"] == 5
    assert "environ" not in text.lower() or "HF_TOKEN" not in text


# ------------------------------------------------------------------------------------------
# Workflow level: every artifact has a record; a change is followed by records and reruns
# ------------------------------------------------------------------------------------------
LOGISTICS = {"logs", "benchmarks", "provenance"}
# The rules of the tiny config's eval path, and of the summaries built over it (the manifest
# lists the former only).
EVAL_RULES = {
    "prepare_corpus",
    "prepare_topics",
    "bm25_index",
    "bm25_retrieve",
    "evaluate_run",
    "baselines_table",
    "reproduction_table",
}
SUMMARY_RULES = {"provenance_manifest", "cost_table", "report_html"}


def _artifacts(results: Path) -> list[Path]:
    """Every file a rule declared: all but logs, benchmarks and the per-job records (the
    manifest, which a rule declares, counts)."""
    manifest = {results / "provenance/manifest.json", results / "provenance/manifest.md"}
    return sorted(
        p
        for p in results.rglob("*")
        if p.is_file() and (p.relative_to(results).parts[0] not in LOGISTICS or p in manifest)
    )


def _records(results: Path) -> dict[str, dict]:
    records = {}
    for file in (results / "provenance").rglob("*.json"):
        if file.name == "manifest.json" and file.parent == results / "provenance":
            continue
        records[str(file.relative_to(results))] = json.loads(file.read_text())
    return records


def _producer(records: dict[str, dict], path: str) -> tuple[str, dict, dict]:
    """(record file, record, output entry) of the output equal to or holding ``path``."""
    for name, record in records.items():
        for output in record["outputs"]:
            if path == output["path"] or path.startswith(output["path"] + "/"):
                return name, record, output
    raise AssertionError(f"no provenance record has {path} among its outputs")


@pytest.fixture(scope="module")
def workflow_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("provenance")
    data = tiny_beir(root / "data")
    config = tiny_config(data)
    config["datasets"]["tiny"]["description"] = f"tiny test set (access token {TOKEN})"
    workdir = root / "work"
    workdir.mkdir()
    saved = {k: os.environ.get(k) for k in SECRET_ENV}
    os.environ.update(SECRET_ENV)
    try:
        result = snakemake(workdir, config)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return workdir, config, result


@pytest.mark.slow
def test_every_artifact_has_a_record_with_its_digest(workflow_run):
    workdir, _, _ = workflow_run
    results = workdir / "results"
    records = _records(results)
    artifacts = _artifacts(results)
    assert len(artifacts) >= 14, artifacts
    rules_seen = set()
    for artifact in artifacts:
        rel = str(artifact.relative_to(workdir))
        name, record, output = _producer(records, rel)
        rules_seen.add(record["rule"])
        if output["kind"] == "file":
            assert output["sha256"] == _sha(artifact), rel
            assert output["size"] == artifact.stat().st_size, rel
        else:
            assert output["sha256"] == _dir_digest(workdir / output["path"]), rel
        # The record sits where the job's log does, under provenance/ instead of logs/.
        log = record["log"]
        assert name == "provenance/" + log.split("/logs/", 1)[1].removesuffix(".log") + ".json"
        assert record["code"]["commit"] and len(record["code"]["commit"]) == 40
        assert record["packages"]["snakemake"] and record["python"]["version"]
        assert record["seed"] == 42 and record["device"]["cpu"]
        assert record["wall_s"] >= 0 and record["started"] <= record["ended"]
    assert rules_seen >= EVAL_RULES | SUMMARY_RULES
    # Inputs: a consumer's recorded input digest is its producer's recorded output digest.
    for record in records.values():
        for entry in record["inputs"]:
            if entry["path"].startswith("results/"):
                _, _, produced = _producer(records, entry["path"])
                assert entry["sha256"] == produced["sha256"], (record["rule"], entry["path"])


@pytest.mark.slow
def test_manifest_lists_every_job_behind_the_targets(workflow_run):
    workdir, config, _ = workflow_run
    manifest = json.loads((workdir / "results/provenance/manifest.json").read_text())
    rules = {job["rule"] for job in manifest["jobs"]}
    assert rules == EVAL_RULES
    assert manifest["stale"] == [] and all(a["verified"] for a in manifest["artifacts"])
    assert manifest["unrecorded"] == []
    # The BEIR folder's files are the data rules' inputs: listed as sources with their digests.
    data = Path(config["datasets"]["tiny"]["beir_folder"])
    files = [data / "corpus.jsonl", data / "qrels" / "test.tsv", data / "queries.jsonl"]
    assert manifest["sources"] == [
        {"path": str(f), "sha256": _sha(f), "size": f.stat().st_size} for f in files
    ]
    # The manifest knows each rule's declared container (the job itself cannot see it).
    declared = {job["rule"]: job["container"]["declared"] for job in manifest["jobs"]}
    assert declared["bm25_index"] == "docker://localhost/irflow-eval:0.1.0"
    assert (
        "| `results/tables/baselines.tsv` | baselines_table |"
        in (workdir / "results/provenance/manifest.md").read_text()
    )


@pytest.mark.slow
def test_planted_secrets_reach_no_log_record_or_report(workflow_run):
    workdir, _, result = workflow_run
    secrets = [TOKEN, SECRET_ENV["IRFLOW_TEST_API_KEY"]]
    scanned = 0
    for path in (workdir / "results").rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            scanned += 1
            for secret in secrets:
                assert secret.encode() not in content, path
    for path in (workdir / ".snakemake" / "log").rglob("*"):
        if path.is_file():
            assert TOKEN not in path.read_text(errors="replace"), path
    assert TOKEN not in result.stdout + result.stderr
    assert scanned > 20
    # A description decides no artifact, so it stays out of the params (and the records); the
    # report shows the configuration with it, redacted.
    record = json.loads((workdir / "results/provenance/prepare_corpus/tiny.json").read_text())
    assert "description" not in json.dumps(record["params"])
    html = (workdir / "results/report/index.html").read_text()
    assert "tiny test set (access token [REDACTED])" in html


@pytest.mark.slow
def test_changed_parameter_reruns_only_downstream_and_records_follow(workflow_run, tmp_path):
    workdir, config, _ = workflow_run
    results = workdir / "results"
    before = {name: json.dumps(r, sort_keys=True) for name, r in _records(results).items()}
    changed = copy.deepcopy(config)
    changed["retrievers"]["bm25"]["k1"] = 1.2
    jobs = planned_jobs(snakemake(workdir, changed, "-n").stdout)
    assert jobs == {
        "bm25_index": 1,
        "bm25_retrieve": 1,
        "evaluate_run": 1,
        "baselines_table": 1,
        "reproduction_table": 1,
        "provenance_manifest": 1,
        "cost_table": 1,
        "report_html": 1,
        "all": 1,
    }
    snakemake(workdir, changed)
    after = _records(results)
    rerun = {name for name in after if json.dumps(after[name], sort_keys=True) != before[name]}
    assert rerun == {
        "provenance/bm25_index/tiny/bm25.json",
        "provenance/bm25_retrieve/tiny/bm25.json",
        "provenance/evaluate_run/tiny/first-stage/bm25.json",
        "provenance/baselines_table/baselines.json",
        "provenance/reproduction_table/reproduction.json",
        "provenance/provenance_manifest/manifest.json",
        "provenance/cost_table/cost.json",
        "provenance/report_html/index.json",
    }
    index = after["provenance/bm25_index/tiny/bm25.json"]
    assert index["params"]["bm25"]["k1"] == 1.2
    old_index = json.loads(before["provenance/bm25_index/tiny/bm25.json"])
    assert old_index["params"]["bm25"]["k1"] == 0.9
    assert index["outputs"][0]["sha256"] != old_index["outputs"][0]["sha256"]
    assert index["outputs"][0]["sha256"] == _dir_digest(results / "indexes/tiny/bm25")
    # The new index digest flows into the retrieval job's record as its input.
    retrieve = after["provenance/bm25_retrieve/tiny/bm25.json"]
    by_name = {entry["name"]: entry for entry in retrieve["inputs"]}
    assert by_name["index"]["sha256"] == index["outputs"][0]["sha256"]
    run = results / "runs/tiny/first-stage/bm25.trec"
    assert retrieve["outputs"][0]["sha256"] == _sha(run)


def test_manifest_tells_a_changed_output_from_a_deleted_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    outputs = {"changed": Path("results/a.txt"), "deleted": Path("results/b.txt")}
    for name, path in outputs.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)
        record = {
            "schema": provenance.SCHEMA,
            "rule": f"make_{name}",
            "wildcards": {},
            "params": {},
            "inputs": [],
            "outputs": [provenance.describe_path(path)],
            "python": {"version": "3.11"},
            "device": {"cpu": "x", "gpus": []},
            "ended": "2026-11-24T00:00:00",
        }
        record_file = Path("results/provenance") / f"make_{name}" / "job.json"
        record_file.parent.mkdir(parents=True)
        record_file.write_text(json.dumps(record))
    outputs["changed"].write_text("edited by hand")
    outputs["deleted"].unlink()

    manifest = provenance.collect_manifest([str(p) for p in outputs.values()], "results/provenance")
    assert manifest["stale"] == ["results/a.txt"]
    assert manifest["missing"] == ["results/b.txt"]
    assert "results/b.txt` | make_deleted | 7 | " in provenance.manifest_markdown(manifest)


def test_records_hold_the_numerics_settings_of_torch_jobs():
    """A torch job's record says how reproducible its numbers are (deterministic algorithms,
    TF32, cuBLAS workspace); a job that never imported torch records none (and imports none)."""
    probe = (
        "import sys, json\n"
        "from irflow.provenance.environment import numerics\n"
        "before = numerics()\n"
        "assert 'torch' not in sys.modules\n"
        "import torch\n"
        "torch.use_deterministic_algorithms(True)\n"
        "print(json.dumps([before, numerics()]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env={**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8"},
    )
    assert done.returncode == 0, done.stderr
    before, after = json.loads(done.stdout.strip().splitlines()[-1])
    assert before is None
    assert after["deterministic_algorithms"] is True
    assert after["cublas_workspace_config"] == ":4096:8"
    assert {"cudnn_benchmark", "cuda_matmul_allow_tf32", "float32_matmul_precision"} <= set(after)


def test_records_name_the_commit_a_hub_revision_resolved_to(tmp_path, monkeypatch):
    """A hub model in a job's params is recorded with the commit the local cache holds for its
    revision (read offline); an uncached one says so (None); a pinned commit is itself."""
    from irflow.provenance.hub import hub_models

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--org--model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    params = {
        "model": {"name": "m", "hf_id": "org/model", "revision": "main"},
        "teacher": {"model": {"hf_id": "org/missing"}},
        "init": {"hf_id": "org/pinned", "revision": "f" * 40},
    }
    assert hub_models(params) == [
        {"hf_id": "org/model", "revision": "main", "resolved": commit},
        {"hf_id": "org/missing", "revision": None, "resolved": None},
        {"hf_id": "org/pinned", "revision": "f" * 40, "resolved": "f" * 40},
    ]
