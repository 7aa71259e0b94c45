"""Reproduction checks: statuses over small metric files, and `snakemake check` on a real run."""

from __future__ import annotations

import copy
import math

import pandas as pd
import pytest
from report_fixtures import tiny_beir, tiny_config
from workflow_helpers import snakemake

from irflow import checks
from irflow.io import InputError

HEADER = "dataset\trun\trel_level\tnDCG@10\tRR@10\tqueries\n"


def _mean(tmp_path, dataset, run, ndcg, rr=0.5):
    path = tmp_path / "metrics" / dataset / run / "mean.tsv"
    path.parent.mkdir(parents=True)
    path.write_text(HEADER + f"{dataset}\t{run}\t2\t{ndcg}\t{rr}\t43\n")
    return path


def _exp(dataset, run, value, tolerance, measure="nDCG@10", **extra):
    return checks.Expectation(dataset, run, measure, value, tolerance, source="test", **extra)


def test_statuses_over_small_metric_files(tmp_path):
    files = {
        ("dl19", "first-stage/given"): _mean(tmp_path, "dl19", "first-stage/given", 0.5058),
        ("dl19", "rerank/given/x"): _mean(tmp_path, "dl19", "rerank/given/x", 0.6424),
    }
    table = checks.evaluate(
        [
            _exp("dl19", "first-stage/given", 0.5058, 0.0001),  # exact
            _exp("dl19", "first-stage/given", 0.5059, 0.0),  # 1e-4 off: still exact
            _exp("dl19", "first-stage/given", 0.5061, 0.0003),  # difference == tolerance: ok
            _exp("dl19", "first-stage/given", 0.5062, 0.0003),  # 0.0004, within 2 x 0.0003
            _exp("dl19", "first-stage/given", 0.5065, 0.0003),  # 0.0007 off: missed
            _exp("dl19", "rerank/given/x", 0.6431, 0.0005, tolerance_okish=0.0005),  # missed
            _exp("dl19", "first-stage/given", 0.5, 0.1, measure="AP"),  # no such column
            _exp("vaswani", "first-stage/bm25", 0.4449, 0.0005),  # no metric file
        ],
        files,
    )
    assert list(table["class"]) == [
        "exact",
        "exact",
        "ok",
        "ok-ish",
        "missed",
        "missed",
        "missing",
        "missing",
    ]
    assert list(table.status) == [
        "reproduced",
        "reproduced",
        "reproduced",
        "reproduced",  # ok-ish passes: flagged, not failing
        "missed",
        "missed",
        "missing",
        "missing",
    ]
    assert table.measured[0] == 0.5058 and table.difference[0] == 0.0
    assert list(table.tolerance_okish[:6]) == pytest.approx(
        [0.0002, 0, 0.0006, 0.0006, 0.0006, 0.0005]
    )
    assert round(table.difference[5], 4) == -0.0007
    assert math.isnan(table.measured[7])


def test_each_class_and_its_bounds():
    # tolerance 0.01, tolerance_okish 0.03: the bounds belong to the narrower class.
    exp = _exp("d", "r", 0.5, 0.01, tolerance_okish=0.03)
    cases = {
        0.5: "exact",
        0.5001: "exact",
        0.4999: "exact",
        0.50011: "ok",
        0.51: "ok",
        0.49: "ok",
        0.5101: "ok-ish",
        0.53: "ok-ish",
        0.47: "ok-ish",
        0.5301: "missed",
        0.2: "missed",
        math.nan: "missing",
    }
    for measured, grade in cases.items():
        assert exp.classify(measured)[0] == grade, measured
    assert exp.classify(0.52) == ("ok-ish", "reproduced")
    strict = _exp("d", "r", 0.5, 0.01, tolerance_okish=0.03, strict=True)
    assert strict.classify(0.52) == ("ok-ish", "missed")
    assert strict.classify(0.505) == ("ok", "reproduced")
    # Without tolerance_okish the ok-ish band is twice the tolerance.
    assert _exp("d", "r", 0.5, 0.01).classify(0.519) == ("ok-ish", "reproduced")
    assert _exp("d", "r", 0.5, 0.01).classify(0.521) == ("missed", "missed")


def test_config_forms():
    plain = checks.Expectation.from_config(
        {"dataset": "d", "run": "r/", "measure": "m", "value": 0.5, "tolerance": 0.01}
    )
    assert (plain.tolerance, plain.okish, plain.strict, plain.run) == (0.01, 0.02, False, "r")
    wide = checks.Expectation.from_config(
        {"dataset": "d", "run": "r", "measure": "m", "value": 0.5, "tolerance": 0.01,
         "tolerance_okish": 0.03, "strict": True}
    )  # fmt: skip
    assert (wide.okish, wide.strict) == (0.03, True)
    with pytest.raises(
        InputError, match=r"expectations\[1\].*tolerance_okish \(0.005\) is narrower"
    ):
        checks.Expectation.from_config(
            {"dataset": "d", "run": "r", "measure": "m", "value": 0.5, "tolerance": 0.01,
             "tolerance_okish": 0.005},
            where="expectations[1]",
        )  # fmt: skip


def test_failures_name_each_missed_and_missing_row(tmp_path):
    files = {("dl19", "first-stage/given"): _mean(tmp_path, "dl19", "first-stage/given", 0.5058)}
    table = checks.evaluate(
        [
            _exp("dl19", "first-stage/given", 0.5058, 0.0001),
            _exp("dl19", "first-stage/given", 0.6, 0.01),
            _exp("scifact-test", "first-stage/bm25", 0.679, 0.015),
            _exp("dl19", "first-stage/given", 0.52, 0.01),  # ok-ish: flagged
            _exp("dl19", "first-stage/given", 0.49, 0.01, strict=True),  # ok-ish, strict
        ],
        files,
    )
    missed = (
        "MISSED: dl19 first-stage/given nDCG@10: measured 0.5058, expected 0.6000 ± 0.01 "
        "(ok-ish ± 0.02)"
    )
    missing = (
        "MISSING: scifact-test first-stage/bm25 nDCG@10: expected 0.6790 ± 0.015 "
        "(ok-ish ± 0.03), not measured"
    )
    strict = (
        "OK-ISH (strict): dl19 first-stage/given nDCG@10: measured 0.5058, expected 0.4900 ± 0.01 "
        "(ok-ish ± 0.02)"
    )
    okish = (
        "dl19 first-stage/given nDCG@10: measured 0.5058, expected 0.5200 ± 0.01 (ok-ish ± 0.02)"
    )
    assert checks.failures(table) == [missed, missing, strict]
    assert checks.failures(table, fail_on_missing=False) == [missed, strict]
    assert checks.failures(table, strict=True) == [
        missed,
        missing,
        f"OK-ISH (strict): {okish}",
        strict,
    ]
    assert checks.flagged(table) == [f"OK-ISH: {okish}"]


def test_table_files_round_trip(tmp_path):
    files = {("dl19", "first-stage/given"): _mean(tmp_path, "dl19", "first-stage/given", 0.5058)}
    exps = [_exp("dl19", "first-stage/given", 0.5058, 0.0001)]
    checks.write_reproduction_table(exps, files, tmp_path / "r.tsv", tmp_path / "r.md")
    back = checks.read_reproduction_table(tmp_path / "r.tsv")
    assert list(back.columns) == checks.COLUMNS
    assert back.loc[0, "status"] == "reproduced" and back.loc[0, "measured"] == 0.5058
    markdown = (tmp_path / "r.md").read_text()
    assert "1 reproduced, 0 missed, 0 missing (1 exact, 0 ok, 0 ok-ish, 0 missed, 0 missing)" in (
        markdown
    )
    assert back.loc[0, "class"] == "exact" and back.loc[0, "tolerance_okish"] == 0.0002
    assert "| dl19      | first-stage/given | nDCG@10   | 0.5058" in markdown


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(InputError, match=r"expectations\[3\] lacks the key 'value'"):
        checks.Expectation.from_config(
            {"dataset": "d", "run": "r", "measure": "m"}, where="expectations[3]"
        )
    path = tmp_path / "mean.tsv"
    path.write_text(HEADER + "d\tr\t1\t0.1\t0.2\t3\nd\tr\t1\t0.1\t0.2\t3\n")
    with pytest.raises(InputError, match="expected one row of mean metrics, found 2"):
        checks.read_mean_row(path)
    empty = pd.DataFrame(columns=checks.COLUMNS)
    assert checks.failures(empty) == [] and checks.flagged(empty) == []
    with pytest.raises(InputError, match="must not be negative"):
        _exp("d", "r", 0.5, -0.01)


def test_tables_written_before_classes_still_fail_on_misses():
    old = pd.DataFrame(
        [["d", "r", "m", 0.5, 0.01, 0.6, 0.1, "missed", "", ""]],
        columns=[c for c in checks.COLUMNS if c not in ("class", "tolerance_okish")],
    )
    assert checks.failures(old) == ["MISSED: d r m: measured 0.6000, expected 0.5000 ± 0.01"]


# ------------------------------------------------------------------------------------------
# `snakemake check` on the tiny eval workflow
# ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_snakemake_check_passes_then_fails_naming_the_changed_row(tmp_path):
    config = tiny_config(tiny_beir(tmp_path / "data"))
    config["expectations"].append(
        {
            "dataset": "tiny",
            "run": "first-stage/bm25",
            "measure": "P@10",
            "value": 0.125,  # 4 queries, 5 relevant documents in all: (1+1+1+2)/4/10
            "tolerance": 0.0,
            "source": "hand-computed",
        }
    )
    workdir = tmp_path / "work"
    workdir.mkdir()
    passed = snakemake(workdir, config, "check")
    assert "reproduction check passed: 2 expectations reproduced" in passed.stdout

    changed = copy.deepcopy(config)
    changed["expectations"][0]["value"] = 0.9
    failed = snakemake(workdir, changed, "check", check=False)
    assert failed.returncode != 0
    output = failed.stdout + failed.stderr
    assert "MISSED: tiny first-stage/bm25 nDCG@10: measured 1.0000, expected 0.9000" in output
    assert "P@10" not in output.split("MISSED:", 1)[1].splitlines()[0]
    table = checks.read_reproduction_table(workdir / "results/tables/reproduction.tsv")
    assert list(table.status) == ["missed", "reproduced"]
