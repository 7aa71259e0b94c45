"""compare, package and verify through Snakemake on the tiny workflow (a BM25 and a dense
baseline, and one tiny bi-encoder student in a study): a copy of a run's own runs agrees fully,
another seed's does not; a package verifies in a second working directory, and an edited metric
file in it is named."""

from __future__ import annotations

import gzip
import io
import shutil
import tarfile

import pandas as pd
import pytest
from tiny_workflow import make_bi_encoder, make_collection, run, tiny_config

from irflow.package import ROOT, read_package

ARCHIVE = "results/package/irflow-reproduction.tar.gz"


def config_with_student(collection, model) -> dict:
    config = tiny_config(collection, model)
    config["students"] = {
        "emb": {
            "kind": "bi-encoder",
            "init": "tiny",
            "data": {
                "training_set": "tiny-train",
                "miner": "bm25",
                "teacher": "tiny",
                "filter": "consistency",
            },
            "training": {
                "objective": {"name": "margin_mse"},
                "optimizer": {"name": "adamw", "lr": 1.0e-3},
                "epochs": 1,
                "batch_size": 2,
                "num_negatives": 2,
                "max_length": 48,
            },
        }
    }
    config["studies"] = {
        "s": {"arms": ["emb"], "evaluate": [{"dataset": "tiny-test", "retriever": "bm25"}]}
    }
    config["filters"]["consistency"]["min_negatives"] = 2
    return config


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    root = tmp_path_factory.mktemp("package")
    collection = make_collection(root / "collection")
    model = make_bi_encoder(root)
    config = config_with_student(collection, model)
    first = root / "first"
    first.mkdir()
    run(first, config, "package")
    return root, config, first


@pytest.mark.slow
def test_the_package_holds_config_locks_runs_tables_and_an_index(packaged):
    _, config, first = packaged
    members = read_package(first / ARCHIVE)
    assert "config.yaml" in members and "containers.json" in members
    assert {"envs/requirements.lock", "envs/eval.lock", "envs/requirements-cuda.lock"} <= set(
        members
    )
    names = set(members)
    assert "results/runs/tiny-test/first-stage/bm25.trec" in names
    assert "results/runs/tiny-test/first-stage/emb.trec" in names
    assert "results/metrics/tiny-test/first-stage/bm25/mean.tsv" in names
    assert "results/tables/studies/s.tsv" in names and "results/tables/baselines.tsv" in names
    assert "results/provenance/manifest.json" in names
    # Deterministic: building it again gives the same bytes.
    before = (first / ARCHIVE).read_bytes()
    run(first, config, "package", "--forcerun", "package_results")
    assert (first / ARCHIVE).read_bytes() == before


@pytest.mark.slow
def test_verify_in_a_second_checkout_reproduces_every_row(packaged, tmp_path):
    root, config, first = packaged
    second = tmp_path / "second"
    second.mkdir()
    archive = str(first / ARCHIVE)
    # This checkout's own config names another results folder: the package's config decides,
    # for the plan and for every job's provenance record alike.
    elsewhere = {**config, "results_dir": "results/elsewhere"}
    result = run(second, elsewhere, "verify", "--config", f"package={archive}")
    assert "package verified" in result.stdout + result.stderr
    assert not (second / "results/elsewhere").exists()
    assert (second / "results/provenance/bm25_retrieve").is_dir()
    table = pd.read_csv(second / "results/tables/verification.tsv", sep="\t")
    assert set(table["status"]) == {"reproduced"}, table[table["status"] != "reproduced"]
    assert {"metric", "run"} <= set(table["kind"])
    assert (table["kind"] == "run").sum() == 3  # bm25, dense-tiny, the student's run
    # From the package's own runs (no training here): every metric row reproduced.
    third = tmp_path / "third"
    third.mkdir()
    run(third, config, "verify", "--config", f"package={archive}", "verify_from=runs")
    table = pd.read_csv(third / "results/tables/verification.tsv", sep="\t")
    assert set(table["status"]) == {"reproduced"} and set(table["kind"]) == {"metric"}
    assert not (third / "results/students").exists(), "verify_from=runs trains nothing"


def _edit_member(archive_in, archive_out, name, edit):
    with tarfile.open(archive_in, "r:gz") as tar:
        members = [(info, tar.extractfile(info).read()) for info in tar.getmembers()]
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w") as tar,
    ):
        for info, data in members:
            if info.name == f"{ROOT}/{name}":
                data = edit(data)
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    archive_out.write_bytes(buffer.getvalue())


@pytest.mark.slow
def test_verify_names_an_edited_metric_row(packaged, tmp_path):
    _, config, first = packaged
    second = tmp_path / "second"
    shutil.copytree(first, second, symlinks=True)
    shutil.rmtree(second / "results/package")
    edited = tmp_path / "edited.tar.gz"
    name = "results/metrics/tiny-test/first-stage/bm25/mean.tsv"

    def bump(data: bytes) -> bytes:
        frame = pd.read_csv(io.BytesIO(data), sep="\t")
        frame.loc[0, "nDCG@10"] = frame.loc[0, "nDCG@10"] + 0.05
        return frame.to_csv(sep="\t", index=False).encode()

    _edit_member(first / ARCHIVE, edited, name, bump)
    result = run(second, config, "verify", "--config", f"package={edited}", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"EDITED file {name}" in output
    assert "DIFFERS metric tiny-test first-stage/bm25 nDCG@10" in output
    table = pd.read_csv(second / "results/tables/verification.tsv", sep="\t")
    bad = table[~table["status"].isin(["reproduced"])]
    assert set(bad["run"]) == {name, "first-stage/bm25"}, bad


@pytest.mark.slow
def test_compare_a_copy_and_a_differing_reference(packaged, tmp_path):
    _, config, first = packaged
    same = run(first, {**config, "reference": str(first / "results")}, "compare")
    assert same.returncode == 0
    table = pd.read_csv(first / "results/tables/compare.tsv", sep="\t")
    assert set(table["status"]) == {"reproduced"}
    assert (table["ktu"] == 1).all() and (table["rbo"] == 1).all()
    assert (table["nDCG@10 rmse"] == 0).all()
    effects = pd.read_csv(first / "results/tables/compare.effects.tsv", sep="\t")
    assert len(effects) == 0  # no reranker baselines, one study arm: no pairs
    # The report shows the comparison when a reference is configured.
    run(first, {**config, "reference": str(first / "results")}, "results/report/index.html")
    html = (first / "results/report/index.html").read_text()
    assert "Rerun vs reference" in html and "compare-table" in html
    # A reference whose student run ranks differently (as another machine's would): the
    # student's row agrees less than fully, the others still fully. (The tiny random student
    # ranks by near-tied scores whatever its seed; tests/test_students_workflow.py compares
    # real MiniLM students of two seeds.)
    reference = tmp_path / "reference"
    shutil.copytree(first / "results/runs", reference / "runs")
    student_run = reference / "runs/tiny-test/first-stage/emb.trec"
    lines = student_run.read_text().splitlines()
    first_topic = [line for line in lines if line.split()[0] == lines[0].split()[0]]
    docs = [line.split()[2] for line in first_topic][::-1]
    swapped = [
        " ".join([*line.split()[:2], doc, *line.split()[3:]])
        for line, doc in zip(first_topic, docs, strict=True)
    ]
    student_run.write_text("\n".join(swapped + lines[len(first_topic) :]) + "\n")
    other = tmp_path / "other"
    shutil.copytree(first, other, symlinks=True)
    run(other, {**config, "reference": str(reference)}, "compare")
    table = pd.read_csv(other / "results/tables/compare.tsv", sep="\t").set_index("run")
    assert table.loc["first-stage/bm25", "status"] == "reproduced"
    student = table.loc["first-stage/emb"]
    assert student["status"] != "reproduced"
    assert student["ktu"] < 1 and student["rbo"] < 1 and student["nDCG@10 rmse"] > 0
    markdown = (other / "results/tables/compare.md").read_text()
    assert f"{student['ktu']:.4f}" in markdown
    topics = pd.read_csv(other / "results/tables/compare.per-topic.tsv", sep="\t")
    assert (topics["ktu"] < 1).sum() == 1
