"""A local BEIR folder's files are inputs of the data rules: editing one on disk reruns its
preparation and everything downstream, and the provenance records follow the new content."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest
from workflow_helpers import absolute_config, copy_dataset, planned_jobs, require_data, snakemake


@pytest.fixture(autouse=True)
def _dl19_data():
    require_data("dl19-bm25-top100")


TARGET = "results/metrics/dl19/first-stage/given/mean.tsv"
PER_QUERY = "results/metrics/dl19/first-stage/given/per-query.tsv"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _dl19_only(folder: Path) -> dict:
    """The CI config cut to DL19's given candidates (no model, no corpus needed)."""
    config = absolute_config()
    config["datasets"] = {"dl19": {**config["datasets"]["dl19"], "beir_folder": str(folder)}}
    config["baselines"] = [{"dataset": "dl19", "retriever": "given"}]
    config["expectations"] = []
    return config


def _record(workdir: Path, name: str) -> dict:
    return json.loads((workdir / "results/provenance" / name).read_text())


def _inputs(record: dict) -> dict[str, dict]:
    return {entry["name"]: entry for entry in record["inputs"]}


def _top_relevant_judgement(folder: Path) -> tuple[int, str, str]:
    """(qrels line index, query, doc) of a judged-relevant document the given run ranks first."""
    firsts = {}
    for line in (folder / "runs/bm25.trec").read_text().splitlines():
        qid, _, doc, rank, *_ = line.split()
        if rank == "1":
            firsts[qid] = doc
    lines = (folder / "qrels/test.tsv").read_text().splitlines()
    for index, line in enumerate(lines[1:], start=1):
        qid, doc, label = line.split("\t")
        if firsts.get(qid) == doc and int(label) > 0:
            return index, qid, doc
    raise AssertionError("no query has a relevant document at rank 1")


def test_editing_a_qrels_line_reruns_preparation_and_downstream_and_records_follow(tmp_path):
    folder = copy_dataset("dl19-bm25-top100", tmp_path)
    qrels_source = folder / "qrels" / "test.tsv"
    config = _dl19_only(folder)
    workdir = tmp_path / "work"
    workdir.mkdir()
    snakemake(workdir, config, TARGET)

    topics_before = _record(workdir, "prepare_topics/dl19.json")
    evaluate_before = _record(workdir, "evaluate_run/dl19/first-stage/given.json")
    candidates_before = _record(workdir, "given_candidates/dl19/given.json")
    # The source files are the preparation's inputs, with their digests.
    sources = _inputs(topics_before)
    assert set(sources) == {"queries", "qrels"}
    assert sources["qrels"]["path"] == str(qrels_source)
    assert sources["qrels"]["sha256"] == _sha(qrels_source)
    assert sources["queries"]["sha256"] == _sha(folder / "queries.jsonl")
    assert _inputs(candidates_before)["candidates"]["sha256"] == _sha(folder / "runs/bm25.trec")
    per_query_before = pd.read_csv(workdir / PER_QUERY, sep="\t", dtype={"query_id": str})

    # Nothing to do while the sources are unchanged.
    assert planned_jobs(snakemake(workdir, config, TARGET, "-n").stdout) == {}

    # Judge the top-ranked relevant document of one query non-relevant.
    index, qid, doc = _top_relevant_judgement(folder)
    lines = qrels_source.read_text().splitlines()
    lines[index] = f"{qid}\t{doc}\t0"
    qrels_source.write_text("\n".join(lines) + "\n")

    jobs = planned_jobs(snakemake(workdir, config, TARGET, "-n").stdout)
    assert jobs == {"prepare_topics": 1, "evaluate_run": 1}
    snakemake(workdir, config, TARGET)

    topics_after = _record(workdir, "prepare_topics/dl19.json")
    evaluate_after = _record(workdir, "evaluate_run/dl19/first-stage/given.json")
    assert _record(workdir, "given_candidates/dl19/given.json") == candidates_before
    # The preparation's record holds the edited file's digest, and its new output's digest ...
    new_qrels = _inputs(topics_after)["qrels"]["sha256"]
    assert new_qrels == _sha(qrels_source) != sources["qrels"]["sha256"]
    assert _inputs(topics_after)["queries"] == sources["queries"]
    outputs = {entry["name"]: entry["sha256"] for entry in topics_after["outputs"]}
    old_outputs = {entry["name"]: entry["sha256"] for entry in topics_before["outputs"]}
    prepared = workdir / "results/data/datasets/dl19/qrels.trec"
    assert outputs["qrels"] == _sha(prepared) != old_outputs["qrels"]
    assert f"{qid} 0 {doc} 0" in prepared.read_text().splitlines()
    # ... which the evaluation's record holds as its input, beside the unchanged run.
    assert _inputs(evaluate_after)["qrels"]["sha256"] == outputs["qrels"]
    assert _inputs(evaluate_after)["run"] == _inputs(evaluate_before)["run"]
    assert evaluate_after["outputs"] != evaluate_before["outputs"]
    # Only the edited query's figures moved.
    per_query_after = pd.read_csv(workdir / PER_QUERY, sep="\t", dtype={"query_id": str})
    before_rows = per_query_before.set_index("query_id")
    after_rows = per_query_after.set_index("query_id")
    assert list(after_rows.index) == list(before_rows.index)
    moved = {q for q in before_rows.index if not before_rows.loc[q].equals(after_rows.loc[q])}
    assert moved == {qid}


def test_missing_beir_folder_is_named_by_its_config_key_in_a_dry_run(tmp_path):
    config = _dl19_only(tmp_path / "nowhere")
    result = snakemake(tmp_path, config, TARGET, "-n", check=False)
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "config: datasets.dl19.beir_folder" in message
    assert f"folder {tmp_path / 'nowhere'} does not exist" in message
    assert not (tmp_path / "results").exists()


def test_missing_qrels_split_is_named_by_its_config_key_in_a_dry_run(tmp_path):
    folder = copy_dataset("dl19-bm25-top100", tmp_path)
    config = _dl19_only(folder)
    config["datasets"]["dl19"]["split"] = "dev"
    result = snakemake(tmp_path, config, TARGET, "-n", check=False)
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert f"config: datasets.dl19.split: {folder / 'qrels' / 'dev.tsv'} does not exist" in message
