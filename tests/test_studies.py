"""Study tables: references, paired tests and Holm's correction against hand computations."""

import math

import numpy as np
import pandas as pd
import pytest

from irflow.io import InputError
from irflow.studies import build_study_table, holm, paired_p_value, plan_rows, write_study_table


def test_holm_matches_hand_computation():
    # p sorted: 0.01 (x3 = 0.03), 0.02 (x2 = 0.04), 0.04 (x1 = 0.04); monotone, input order kept.
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    # A later step never lowers an earlier adjusted value, and values cap at 1.
    assert holm([0.5, 0.001, 0.6]) == pytest.approx([1.0, 0.003, 1.0])
    assert holm([]) == []


def test_t_test_matches_formula():
    a = np.array([0.5, 0.7, 0.2, 0.9, 0.4])
    b = np.array([0.4, 0.5, 0.3, 0.6, 0.1])
    d = a - b  # 0.1, 0.2, -0.1, 0.3, 0.3
    t = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
    from scipy.stats import t as student_t

    expected = 2 * student_t.sf(abs(t), df=len(d) - 1)
    assert paired_p_value(a, b, "t-test") == pytest.approx(expected, rel=1e-12)


def test_identical_runs_have_p_one_and_randomization_is_seeded():
    a = np.array([0.1, 0.2, 0.3])
    assert paired_p_value(a, a.copy(), "t-test") == 1.0
    assert paired_p_value(a, a.copy(), "randomization") == 1.0
    x = np.linspace(0, 1, 30)
    y = x - 0.05 + 0.01 * np.sin(np.arange(30))
    p1 = paired_p_value(x, y, "randomization", seed=3)
    assert p1 == paired_p_value(x, y, "randomization", seed=3)
    # Every difference is positive: only the observed sign pattern (and none of the random
    # ones, with overwhelming probability) reaches the observed mean, so p = 1/(N+1).
    assert p1 == pytest.approx(1 / 10_001)
    with pytest.raises(ValueError, match="allowed"):
        paired_p_value(x, y, "wilcoxon")


def write_pq(path, values, measure="nDCG@10"):
    pd.DataFrame({"query_id": [f"q{i}" for i in range(len(values))], measure: values}).to_csv(
        path, sep="\t", index=False
    )
    return str(path)


def test_references_and_table(tmp_path):
    rows = [
        ("base", "base", "d", "rerank/given/base"),
        ("kd", "kd", "d", "rerank/given/kd"),
        ("kd", "kd.untrained", "d", "rerank/given/kd.untrained"),
        ("base", "base.dim64", "d", "rerank/given/base.dim64"),
        ("kd", "kd.dim64", "d", "rerank/given/kd.dim64"),
    ]
    files = [
        write_pq(tmp_path / "a.tsv", [0.5, 0.5, 0.5, 0.5]),
        write_pq(tmp_path / "b.tsv", [0.6, 0.7, 0.6, 0.7]),
        write_pq(tmp_path / "c.tsv", [0.1, 0.2, 0.1, 0.2]),
        write_pq(tmp_path / "d.tsv", [0.4, 0.4, 0.4, 0.4]),
        write_pq(tmp_path / "e.tsv", [0.4, 0.4, 0.4, 0.4]),
    ]
    planned = plan_rows(rows, files, baseline="base")
    refs = [r.reference for r in planned]
    assert refs == [
        None,
        "rerank/given/base",
        "rerank/given/kd",
        None,  # the baseline arm's own dim variant has no reference
        "rerank/given/base.dim64",
    ]
    assert [r.variant for r in planned] == ["trained", "trained", "untrained", "dim64", "dim64"]
    frame, deltas = build_study_table("s", planned, ["nDCG@10"], alpha=0.05)
    kd = frame.iloc[1]
    assert kd["nDCG@10"] == pytest.approx(0.65)
    assert kd["nDCG@10 delta"] == pytest.approx(0.15)
    untrained = frame.iloc[2]
    assert untrained["nDCG@10 delta"] == pytest.approx(0.15 - 0.65)
    # Three comparisons: kd vs base, untrained vs kd, kd.dim64 vs base.dim64 (identical: p = 1).
    assert frame.iloc[4]["nDCG@10 p"] == 1.0
    ps = [frame.iloc[i]["nDCG@10 p"] for i in (1, 2, 4)]
    assert [frame.iloc[i]["nDCG@10 p_holm"] for i in (1, 2, 4)] == pytest.approx(holm(ps))
    assert frame.iloc[4]["nDCG@10 sig"] == ""
    assert len(deltas) == 3 * 4
    assert set(deltas["delta"].round(6)) >= {0.1, 0.2}


def test_mismatched_queries_are_refused(tmp_path):
    rows = [("a", "a", "d", "r/a"), ("b", "b", "d", "r/b")]
    files = [write_pq(tmp_path / "a.tsv", [0.1, 0.2]), write_pq(tmp_path / "b.tsv", [0.1])]
    with pytest.raises(InputError, match="different queries"):
        build_study_table("s", plan_rows(rows, files, "a"), ["nDCG@10"])


def test_unknown_measure_names_the_file(tmp_path):
    rows = [("a", "a", "d", "r/a")]
    files = [write_pq(tmp_path / "a.tsv", [0.1, 0.2])]
    with pytest.raises(InputError, match="a.tsv.*MAP"):
        build_study_table("s", plan_rows(rows, files, "a"), ["MAP"])


def test_written_files(tmp_path):
    rows = [("a", "a", "d", "r/a"), ("b", "b", "d", "r/b")]
    files = [
        write_pq(tmp_path / "a.tsv", [0.1, 0.2, 0.3]),
        write_pq(tmp_path / "b.tsv", [0.2, 0.4, 0.5]),
    ]
    spec = {"arms": ["a", "b"], "measures": ["nDCG@10"], "description": "toy"}
    out = tmp_path / "out"
    write_study_table(
        "toy", spec, rows, files, out / "t.tsv", out / "t.md", out / "t.per-query.tsv"
    )
    table = pd.read_csv(out / "t.tsv", sep="\t")
    assert list(table["arm"]) == ["a", "b"]
    assert "(+0.1667)" in (out / "t.md").read_text()
    assert len(pd.read_csv(out / "t.per-query.tsv", sep="\t")) == 3
