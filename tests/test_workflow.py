"""The workflow as users run it: config validation, dry runs, an end-to-end run and reruns."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
from workflow_helpers import (
    absolute_config,
    copy_dataset,
    planned_jobs,
    require_config_inputs,
    require_data,
    snakemake,
)


# ------------------------------------------------------------------------------------------
# Configuration errors name the key, before any job runs
# ------------------------------------------------------------------------------------------
def _dry_run_error(tmp_path, config) -> str:
    result = snakemake(tmp_path, config, "-n", check=False)
    assert result.returncode != 0, "a bad config must stop the workflow"
    assert not (tmp_path / "results").exists(), "nothing may be written for a bad config"
    return result.stdout + result.stderr


def test_unknown_config_key_is_named(tmp_path):
    config = absolute_config()
    config["datasets"]["dl19"]["splitt"] = "test"
    message = _dry_run_error(tmp_path, config)
    assert "splitt" in message


def test_unknown_top_level_key_is_named(tmp_path):
    config = absolute_config(retreivers={})
    assert "retreivers" in _dry_run_error(tmp_path, config)


def test_wrong_type_names_the_key(tmp_path):
    config = absolute_config()
    config["datasets"]["dl19"]["rel_level"] = "two"
    message = _dry_run_error(tmp_path, config)
    assert "datasets.dl19.rel_level" in message and "integer" in message
    # The refused value is never echoed: a wrongly placed value may be a credential.
    assert "two" not in message


def test_undefined_reference_names_the_entry_and_known_names(tmp_path):
    config = absolute_config()
    config["baselines"][0]["retriever"] = "bm26"
    message = _dry_run_error(tmp_path, config)
    assert "baselines[0].retriever" in message and "bm26" in message and "bm25" in message


def test_dataset_needs_exactly_one_source(tmp_path):
    config = absolute_config()
    config["datasets"]["dl19"]["ir_datasets"] = "msmarco-passage/trec-dl-2019/judged"
    assert "dl19" in _dry_run_error(tmp_path, config)


# ------------------------------------------------------------------------------------------
# Dry runs of the shipped configurations
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["config.yaml", "configs/ci.yaml", "configs/paper.yaml"])
def test_shipped_configs_dry_run(tmp_path, name):
    result = snakemake(tmp_path, absolute_config(name), "-n")
    jobs = planned_jobs(result.stdout)
    assert jobs.get("evaluate_run", 0) >= 1 and jobs.get("baselines_table") == 1


# ------------------------------------------------------------------------------------------
# End to end on the CI config (real data, real MiniLM)
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ci_run(tmp_path_factory):
    config = absolute_config()
    require_config_inputs(config)
    workdir = tmp_path_factory.mktemp("ci-run")
    snakemake(workdir, config)
    # The reproduction check of the config's expectations passes (it fails listing misses).
    check = snakemake(workdir, config, "check")
    assert "reproduction check passed: 2 expectations reproduced" in check.stdout + check.stderr
    return workdir, config


@pytest.mark.slow
def test_end_to_end_tables(ci_run):
    workdir, _ = ci_run
    table = pd.read_csv(workdir / "results/tables/baselines.tsv", sep="\t", dtype={"run": str})
    ndcg = {(r["dataset"], r["run"]): r["nDCG@10"] for _, r in table.iterrows()}
    # Anserini's published DL19 BM25 nDCG@10 (the given candidates are its top 100).
    assert round(ndcg[("dl19", "first-stage/given")], 4) == 0.5058
    # pyserini's BM25-flat on BEIR SciFact: 0.679.
    assert abs(ndcg[("scifact-test", "first-stage/bm25")] - 0.679) <= 0.015
    assert set(table.run) == {
        "first-stage/given",
        "rerank/given/minilm-l6",
        "first-stage/bm25",
        "first-stage/dense-minilm-l6",
    }
    markdown = (workdir / "results/tables/baselines.md").read_text()
    assert "0.5058" in markdown


@pytest.mark.slow
def test_rerun_with_nothing_changed_runs_nothing(ci_run):
    workdir, config = ci_run
    result = snakemake(workdir, config, "-n")
    assert planned_jobs(result.stdout) == {}, result.stdout[-2000:]
    assert "Nothing to be done" in result.stdout + result.stderr


@pytest.mark.slow
def test_changing_one_model_reruns_only_its_downstream(ci_run):
    workdir, config = ci_run
    changed = copy.deepcopy(config)
    changed["models"]["minilm-l6"]["max_length"] = 96
    jobs = planned_jobs(snakemake(workdir, changed, "-n").stdout)
    # The model feeds the dense retriever (via its corpus embeddings) and the reranker.
    assert jobs == {
        "encode_corpus": 1,
        "dense_retrieve": 1,
        "rerank_bi_encoder": 1,
        "evaluate_run": 2,
        "baselines_table": 1,
        # rules/report.smk: the summaries of everything rebuild after any change.
        "provenance_manifest": 1,
        "cost_table": 1,
        "report_html": 1,
        "all": 1,
    }


@pytest.mark.slow
def test_report_renders(ci_run):
    workdir, config = ci_run
    snakemake(workdir, config, "--report", str(workdir / "report.html"))
    html = (workdir / "report.html").read_text()
    assert "baselines.tsv" in html


# ------------------------------------------------------------------------------------------
# Bad data stops the job with file and line, and leaves no output
# ------------------------------------------------------------------------------------------
def test_malformed_qrels_line_is_named_and_nothing_written(tmp_path):
    require_data("dl19-bm25-top100")
    folder = copy_dataset("dl19-bm25-top100", tmp_path)
    qrels = folder / "qrels" / "test.tsv"
    lines = qrels.read_text().splitlines()
    lines[6] = lines[6] + "\textra"
    qrels.write_text("\n".join(lines) + "\n")
    config = absolute_config()
    config["datasets"]["dl19"]["beir_folder"] = str(folder)
    result = snakemake(tmp_path, config, "results/data/datasets/dl19/qrels.trec", check=False)
    assert result.returncode != 0
    log = (tmp_path / "results/logs/prepare_topics/dl19.log").read_text()
    assert f"{qrels}:7:" in log
    assert not list((tmp_path / "results/data/datasets").rglob("*.*"))


def test_run_queries_missing_from_qrels_are_reported_not_scored(tmp_path):
    require_data("dl19-bm25-top100")
    folder = copy_dataset("dl19-bm25-top100", tmp_path)
    run = folder / "runs" / "bm25.trec"
    run.write_text(run.read_text() + "999999 Q0 7067032 1 99.0 rank\n")
    config = absolute_config()
    config["datasets"]["dl19"]["beir_folder"] = str(folder)
    target = "results/metrics/dl19/first-stage/given/mean.tsv"
    result = snakemake(tmp_path, config, target, check=False)
    assert result.returncode != 0
    log = (tmp_path / "results/logs/evaluate_run/dl19/first-stage/given.log").read_text()
    assert "999999" in log and "no judgements" in log
    assert not (tmp_path / target).exists()
    assert not (tmp_path / "results/metrics/dl19/first-stage/given/per-query.tsv").exists()


def test_missing_dataset_folder_says_how_to_point_elsewhere(tmp_path):
    require_data("scifact")  # dl19 is pointed elsewhere
    config = absolute_config()
    config["datasets"]["dl19"]["beir_folder"] = str(tmp_path / "nowhere")
    # Found while the DAG is built (the folder's files are the data rules' inputs): no job runs.
    message = _dry_run_error(tmp_path, config)
    assert "does not exist" in message and "datasets: dl19: beir_folder" in message


@pytest.mark.slow
def test_query_sharded_bm25_gives_the_same_run_file(ci_run, tmp_path):
    """resources.bm25_retrieve.query_shards: 3 plans three shard jobs and an ordered merge; the
    run file is byte-identical to the one-job run."""
    workdir, config = ci_run
    sharded = copy.deepcopy(config)
    sharded.setdefault("resources", {})["bm25_retrieve"] = {"query_shards": 3}
    target = "results/runs/scifact-test/first-stage/bm25.trec"
    result = snakemake(tmp_path, sharded, target)
    assert (tmp_path / target).read_bytes() == (workdir / target).read_bytes()
    shards = sorted((tmp_path / "results/run-shards/scifact-test/first-stage/bm25").iterdir())
    assert [p.name for p in shards] == [f"shard-{i}-of-3.trec" for i in range(3)]
    assert "merge_runs" in result.stdout + result.stderr
