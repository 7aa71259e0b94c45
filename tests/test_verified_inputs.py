"""Verified inputs: a job refuses a workflow-made input that is not what its producer recorded,
naming the file, the record and the command that rebuilds it; the reproduction check fails on
any stale artifact behind a measured row; records describe the code that actually ran."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from report_fixtures import tiny_beir, tiny_config
from workflow_helpers import REPO, snakemake

from irflow import checks, provenance
from irflow.io import InputError
from irflow.provenance import records as records_module

RUN_TEXT = "q1 Q0 d1 1 2.5 bm25\nq1 Q0 d2 2 1.5 bm25\n"


def produce(rule: str, outputs: list[str], inputs: list[str] = (), key: str = "k") -> Path:
    """Write the record (and its pointers) a job of ``rule`` would leave for ``outputs``."""
    record = {
        "schema": provenance.SCHEMA,
        "rule": rule,
        "wildcards": {},
        "params": {},
        "inputs": [provenance.describe_path(p) for p in inputs],
        "outputs": [provenance.describe_path(p) for p in outputs],
        "ended": "2026-01-01T00:00:00+00:00",
    }
    file = provenance.record_path("results", None, rule, key)
    provenance.write_record(file, record)
    provenance.write_pointers("results", file, record)
    return file


@pytest.fixture
def results(tmp_path, monkeypatch):
    """A working directory with results/runs/x.trec made by rule make_run."""
    monkeypatch.chdir(tmp_path)
    run = Path("results/runs/x.trec")
    run.parent.mkdir(parents=True)
    run.write_text(RUN_TEXT)
    return tmp_path, str(run), produce("make_run", [str(run)])


def only_problem(paths) -> provenance.Problem:
    _, problems = provenance.verify_inputs("results", paths)
    assert len(problems) == 1, problems
    return problems[0]


def assert_names_file_record_and_command(message: str, path: str, record, rule: str) -> None:
    assert path in message
    assert str(record) in message
    assert f"snakemake --profile profiles/local {path} --forcerun {rule}" in message


# ------------------------------------------------------------------------------------------
# Unit level: each kind of damage is refused, naming file, record and rebuild command
# ------------------------------------------------------------------------------------------
def test_a_file_as_recorded_is_trusted_and_its_digest_reused(results):
    _, run, _ = results
    described, problems = provenance.verify_inputs("results", [run, "../elsewhere/source.tsv"])
    assert problems == []
    assert described == {run: provenance.describe_path(run)}  # sources are neither checked
    assert provenance.require_verified("results", [run]) == described  # nor hashed


def test_a_truncated_file_is_refused(results):
    _, run, record = results
    Path(run).write_text(RUN_TEXT.splitlines()[0] + "\n")  # still a valid run file
    problem = only_problem([run])
    assert problem.status == "stale" and problem.record == str(record)
    message = str(problem)
    assert_names_file_record_and_command(message, run, record, "make_run")
    assert f"now 20 bytes, sha256 {provenance.describe_path(run)['sha256'][:12]}" in message
    assert f"recorded {len(RUN_TEXT)} bytes" in message
    with pytest.raises(InputError) as err:
        provenance.require_verified("results", [run], "evaluate_run")
    assert isinstance(err.value, provenance.UnverifiedInputError)
    assert str(err.value).startswith("rule evaluate_run refuses 1 input(s) it cannot verify:")
    assert message in str(err.value)


def test_a_file_of_the_same_size_with_edited_bytes_is_refused(results):
    _, run, record = results
    Path(run).write_text(RUN_TEXT.replace("2.5", "9.5"))
    assert Path(run).stat().st_size == len(RUN_TEXT)
    problem = only_problem([run])
    assert problem.status == "stale"
    assert_names_file_record_and_command(str(problem), run, record, "make_run")
    assert f"now {len(RUN_TEXT)} bytes" in str(problem)


def test_a_directory_with_one_file_changed_is_refused(results):
    folder = Path("results/indexes/x")
    (folder / "sub").mkdir(parents=True)
    (folder / "params.json").write_text("{}")
    (folder / "sub" / "data.bin").write_bytes(b"\x00" * 16)
    record = produce("make_index", [str(folder)])
    assert provenance.verify_inputs("results", [str(folder)])[1] == []
    (folder / ".snakemake_timestamp").write_text("later")  # Snakemake's marker: no content
    assert provenance.verify_inputs("results", [str(folder)])[1] == []
    (folder / "sub" / "data.bin").write_bytes(b"\x01" * 16)
    problem = only_problem([str(folder)])
    assert problem.status == "stale"
    assert_names_file_record_and_command(str(problem), str(folder), record, "make_index")
    assert "in 2 files" in str(problem)
    # A file inside a recorded folder is checked through the folder's record.
    inner = only_problem([str(folder / "params.json")])
    assert inner.record == str(record) and f"inside {folder}" in inner.detail


def test_a_workflow_made_file_without_a_record_is_refused(results):
    tmp, _, _ = results
    orphan = Path("results/runs/hand-made.trec")
    orphan.write_text(RUN_TEXT)
    problem = only_problem([str(orphan)])
    assert problem.status == "unrecorded" and problem.record is None
    message = str(problem)
    assert f"UNRECORDED {orphan}: has no provenance record" in message
    assert "results/provenance" in message and "record: none" in message
    assert f"rebuild: snakemake --profile profiles/local --force {orphan}" in message


def test_logs_benchmarks_and_sources_are_not_checked(results):
    tmp, _, _ = results
    for rel in ("results/logs/r/k.log", "results/benchmarks/r/k.tsv", "data/corpus.jsonl"):
        Path(rel).parent.mkdir(parents=True, exist_ok=True)
        Path(rel).write_text("x")
    paths = ["results/logs/r/k.log", "results/benchmarks/r/k.tsv", "data/corpus.jsonl"]
    assert provenance.verify_inputs("results", paths) == ({}, [])
    assert not provenance.is_workflow_made("results", tmp / "results")


def test_records_without_pointers_are_found_by_one_scan(results, monkeypatch):
    _, run, record = results
    provenance.pointer_path("results", run).unlink()  # a record from before pointers existed
    scans = []
    real = records_module.index_records
    monkeypatch.setattr(
        records_module, "index_records", lambda d: scans.append(d) or real(d), raising=True
    )
    index = provenance.RecordIndex("results")
    assert index.lookup(run)[0] == record
    assert index.lookup("results/runs/none.trec") is None
    assert len(scans) == 1
    # With its pointer, no scan at all.
    provenance.write_pointers("results", record, provenance.read_record(record))
    scans.clear()
    assert provenance.RecordIndex("results").lookup(run)[0] == record and scans == []


def test_the_record_reuses_the_digests_taken_at_the_start(results, monkeypatch):
    _, run, _ = results
    described, _ = provenance.verify_inputs("results", [run])
    hashed = []
    real = records_module.describe_path
    monkeypatch.setattr(
        records_module, "describe_path", lambda p, n=None: hashed.append(p) or real(p, n)
    )
    Path("results/out.txt").write_text("out")
    record = provenance.build_record(
        rule="r",
        wildcards={},
        params={},
        inputs=[("run", run)],
        outputs=[(None, "results/out.txt")],
        code={"commit": None},
        config={},
        threads=1,
        started="s",
        ended="e",
        wall_s=0.0,
        described=described,
    )
    assert hashed == ["results/out.txt"]
    assert record["inputs"] == [provenance.describe_path(run, "run")]


# ------------------------------------------------------------------------------------------
# Walking back: stale, missing and outdated artifacts behind a set of paths
# ------------------------------------------------------------------------------------------
def test_stale_inputs_walk_back_through_the_records(results):
    _, run, run_record = results
    metric = Path("results/metrics/x/mean.tsv")
    metric.parent.mkdir(parents=True)
    metric.write_text("dataset\trun\tnDCG@10\nx\tr\t0.5\n")
    metric_record = produce("evaluate_run", [str(metric)], inputs=[run])
    assert provenance.stale_inputs("results", [str(metric)]) == []

    # The run file behind the metric changed by hand: stale, found from the metric file.
    Path(run).write_text(RUN_TEXT.replace("2.5", "9.5"))
    (problem,) = provenance.stale_inputs("results", [str(metric)])
    assert problem.status == "stale" and problem.path == run
    assert_names_file_record_and_command(str(problem), run, run_record, "make_run")

    # Rebuilt since (a new record), the metric file was made from the old run file: outdated.
    produce("make_run", [run])
    (problem,) = provenance.stale_inputs("results", [str(metric)])
    assert problem.status == "outdated" and problem.path == str(metric)
    assert_names_file_record_and_command(str(problem), str(metric), metric_record, "evaluate_run")

    # A recorded output deleted since: missing.
    metric.unlink()
    statuses = {(p.status, p.path) for p in provenance.stale_inputs("results", [str(metric)])}
    assert ("missing", str(metric)) in statuses


# ------------------------------------------------------------------------------------------
# job.start refuses before the script's work; the record follows the verified digests
# ------------------------------------------------------------------------------------------
JOB = """
import sys
from pathlib import Path
from irflow import job

class Smk:
    pass

rule, inp, out = sys.argv[1:4]
smk = Smk()
smk.rule = rule
smk.log = [f"results/logs/{rule}/k.log"]
smk.input = [inp] if inp else []
smk.output = [out]
smk.params = {}
smk.wildcards = {"key": "k"}
smk.threads = 1
smk.config = {"results_dir": "results", "seed": 1}
Path(smk.log[0]).parent.mkdir(parents=True, exist_ok=True)
job.start(smk)
Path("work-started").write_text(rule)
Path(out).parent.mkdir(parents=True, exist_ok=True)
Path(out).write_text(Path(inp).read_text().upper() if inp else "q1 Q0 d1 1 2.5 x\\n")
"""


def run_job(tmp_path: Path, rule: str, inp: str, out: str) -> subprocess.CompletedProcess:
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(JOB))
    return subprocess.run(
        [sys.executable, str(script), rule, inp, out], cwd=tmp_path, capture_output=True, text=True
    )


def test_job_start_refuses_a_changed_input_before_the_work(tmp_path):
    run, metric = "results/runs/x.trec", "results/metrics/x.tsv"
    assert run_job(tmp_path, "make_run", "", run).returncode == 0
    made = run_job(tmp_path, "evaluate", run, metric)
    assert made.returncode == 0, made.stderr
    consumer = json.loads((tmp_path / "results/provenance/evaluate/k.json").read_text())
    producer = json.loads((tmp_path / "results/provenance/make_run/k.json").read_text())
    assert consumer["inputs"][0]["sha256"] == producer["outputs"][0]["sha256"]
    assert (tmp_path / "results/provenance/.by-output/runs/x.trec.ref").read_text() == (
        "provenance/make_run/k.json\n"
    )

    (tmp_path / run).write_text("q1 Q0 d1 1 2.5 y\n")  # same size, other bytes
    (tmp_path / "work-started").unlink()
    (tmp_path / "results/provenance/evaluate/k.json").unlink()
    refused = run_job(tmp_path, "evaluate", run, metric)
    assert refused.returncode != 0
    log = (tmp_path / "results/logs/evaluate/k.log").read_text()
    assert "irflow.provenance.verification.UnverifiedInputError" in log
    assert "rule evaluate refuses 1 input(s) it cannot verify:" in log
    assert f"STALE {run}: changed after it was recorded" in log
    assert "record: results/provenance/make_run/k.json" in log
    assert f"rebuild: snakemake --profile profiles/local {run} --forcerun make_run" in log
    assert not (tmp_path / "work-started").exists()  # refused before the script's work
    assert not (tmp_path / "results/provenance/evaluate/k.json").exists()


# ------------------------------------------------------------------------------------------
# check_reproduction fails on a stale artifact behind a measured row
# ------------------------------------------------------------------------------------------
class FakeSnakemake:
    def __init__(self, inputs, log):
        self.rule, self.input, self.output, self.log = "check", inputs, [], [log]
        self.params, self.wildcards, self.threads = {}, {}, 1
        self.config = {"results_dir": "results"}


def test_check_reproduction_fails_listing_stale_artifacts(results, capsys):
    _, run, run_record = results
    metric = Path(checks.metric_file("results", "x", "first-stage/bm25"))
    metric.parent.mkdir(parents=True)
    metric.write_text("dataset\trun\tnDCG@10\nx\tfirst-stage/bm25\t0.5\n")
    produce("evaluate_run", [str(metric)], inputs=[run])
    expectation = checks.Expectation("x", "first-stage/bm25", "nDCG@10", 0.5, 0.0, "test")
    tsv, md = "results/tables/reproduction.tsv", "results/tables/reproduction.md"
    checks.write_reproduction_table([expectation], {expectation.key: metric}, tsv, md)
    produce("reproduction_table", [tsv, md], inputs=[str(metric)])
    Path("results/logs/check").mkdir(parents=True)

    script = str(REPO / "workflow_scripts/check_reproduction.py")
    smk = FakeSnakemake([tsv], "results/logs/check/reproduction.log")
    # job.start sets up logging and an exit hook in this process: keep them out of pytest.
    saved = sys.stderr, sys.excepthook
    try:
        runpy.run_path(script, init_globals={"snakemake": smk})
        assert "reproduction check passed: 1 expectations reproduced" in capsys.readouterr().out
        Path(run).write_text(RUN_TEXT[:-5] + "9 x\n")
        with pytest.raises(SystemExit) as exit_:
            runpy.run_path(script, init_globals={"snakemake": smk})
    finally:
        sys.stderr, sys.excepthook = saved
    assert "0 of 1 expectations failed, 1 artifacts behind them" in str(exit_.value)
    out = capsys.readouterr().out
    assert f"STALE {run}" in out
    assert_names_file_record_and_command(out, run, run_record, "make_run")


# ------------------------------------------------------------------------------------------
# Records tell the truth about the code
# ------------------------------------------------------------------------------------------
def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def make_checkout(root: Path) -> Path:
    root.mkdir(parents=True)
    git(root, "init", "-q")
    git(root, "config", "user.email", "t@example.org")
    git(root, "config", "user.name", "t")
    (root / "pkg").mkdir()
    (root / "pkg" / "__init__.py").write_text("")
    (root / ".gitignore").write_text(".venv/\n")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "init")
    return root


def test_code_state_is_the_imported_packages_checkout_and_ignores_untracked_results(
    tmp_path, monkeypatch
):
    code = make_checkout(tmp_path / "code")
    other = make_checkout(tmp_path / "elsewhere")
    (other / "pkg" / "__init__.py").write_text("changed")  # the cwd's checkout is dirty
    monkeypatch.chdir(other)
    package = code / "pkg" / "__init__.py"

    state = provenance.code_state(package)
    assert state == {
        "repository": str(code),
        "commit": git(code, "rev-parse", "HEAD"),
        "dirty": False,
    }
    # Untracked outputs of a results_dir inside the checkout do not make it dirty ...
    (code / "my-results" / "runs").mkdir(parents=True)
    (code / "my-results" / "runs" / "x.trec").write_text(RUN_TEXT)
    assert provenance.code_state(package)["dirty"] is False
    # ... a new module in the package does (it may be imported), as does a tracked change.
    (code / "pkg" / "new.py").write_text("")
    assert provenance.code_state(package)["dirty"] is True
    (code / "pkg" / "new.py").unlink()
    (code / "pkg" / "__init__.py").write_text("x = 1\n")
    assert provenance.code_state(package)["dirty"] is True
    # An installed copy that git does not track is not described by the checkout around it.
    installed = code / ".venv" / "site-packages" / "pkg"
    installed.mkdir(parents=True)
    (installed / "__init__.py").write_text("")
    monkeypatch.setenv("IRFLOW_IMAGE_REVISION", "baked")
    assert provenance.code_state(installed / "__init__.py") == {
        "repository": None,
        "commit": "baked",
        "dirty": None,
    }


def test_code_state_defaults_to_irflows_own_checkout(tmp_path, monkeypatch):
    import irflow

    monkeypatch.chdir(tmp_path)  # not a checkout: the working directory plays no part
    expected = Path(irflow.__file__).resolve().parents[2]
    assert provenance.code_state()["repository"] == str(expected)


# ------------------------------------------------------------------------------------------
# Workflow level: a hand-truncated run file stops the job that reads it
# ------------------------------------------------------------------------------------------
RUN_FILE = "results/runs/tiny/first-stage/bm25.trec"
METRICS = "results/metrics/tiny/first-stage/bm25/mean.tsv"


@pytest.mark.slow
def test_forced_job_refuses_a_hand_truncated_run_file(tmp_path):
    config = tiny_config(tiny_beir(tmp_path / "data"))
    work = tmp_path / "work"
    work.mkdir()
    snakemake(work, config, METRICS)
    run = work / RUN_FILE
    lines = run.read_text().splitlines(keepends=True)
    run.write_text("".join(lines[:-1]))  # one ranked document fewer: still a valid run file

    failed = snakemake(work, config, METRICS, "--forcerun", "evaluate_run", check=False)
    assert failed.returncode != 0
    log = (work / "results/logs/evaluate_run/tiny/first-stage/bm25.log").read_text()
    assert f"STALE {RUN_FILE}: changed after it was recorded" in log
    assert "record: results/provenance/bm25_retrieve/tiny/bm25.json" in log
    command = f"snakemake --profile profiles/local {RUN_FILE} --forcerun bm25_retrieve"
    assert f"rebuild: {command}" in log

    # The command it names rebuilds the file; then the job runs again.
    snakemake(work, config, RUN_FILE, "--forcerun", "bm25_retrieve")
    assert run.read_text() == "".join(lines)
    snakemake(work, config, METRICS, "--forcerun", "evaluate_run")
    assert os.path.exists(work / METRICS)
