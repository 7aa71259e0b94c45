"""Rerun vs reference (irflow.compare): agreement measures against hand computations, the
statuses, and the tables written."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from irflow.compare import (
    RunPair,
    compare_runs,
    effect_agreement,
    ranking_agreement,
    reference_runs_folder,
    write_comparison,
)

QRELS = {"q1": {"d1": 1, "d3": 1}, "q2": {"d2": 1}, "q3": {"d4": 1, "d5": 1}}
RUN = {
    "q1": {"d1": 3.0, "d2": 2.0, "d3": 1.0, "d4": 0.5},
    "q2": {"d2": 2.5, "d1": 2.0, "d5": 1.0},
    "q3": {"d5": 4.0, "d1": 3.0, "d4": 2.0},
}


def write_run(path, run):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for qid in sorted(run):
        order = sorted(run[qid].items(), key=lambda x: (x[1], x[0]), reverse=True)
        lines += [f"{qid} Q0 {d} {r} {s!r} t" for r, (d, s) in enumerate(order, 1)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def write_qrels(path):
    lines = [f"{q} 0 {d} {r}" for q, docs in QRELS.items() for d, r in docs.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def scores(values: dict[str, float], measure="nDCG@10") -> pd.DataFrame:
    return pd.DataFrame({"query_id": list(values), measure: list(values.values())})


def test_a_copy_agrees_fully(tmp_path):
    ours = write_run(tmp_path / "ours/d/first-stage/x.trec", RUN)
    theirs = write_run(tmp_path / "ref/d/first-stage/x.trec", RUN)
    pair = RunPair("d", "first-stage/x", ours, theirs, write_qrels(tmp_path / "qrels"))
    runs, topics, _ = compare_runs([pair], ["nDCG@10", "AP"])
    row = runs.iloc[0]
    assert row["status"] == "reproduced" and bool(row["identical_files"])
    assert row["ktu"] == 1.0 and row["rbo"] == 1.0
    assert row["nDCG@10 rmse"] == 0.0 and row["AP rmse"] == 0.0 and row["nDCG@10 delta"] == 0
    assert list(topics["ktu"]) == [1.0] * 3 and list(topics["rbo"]) == [1.0] * 3


def test_kendall_tau_union_and_rbo_by_hand():
    # One swap at the top of four documents: τ over the union (4 docs, 6 pairs, 1 discordant)
    # = (5 - 1) / 6; RBO at depth 4, p = 0.95: overlaps 0/1, 2/2, 3/3, 4/4.
    reference = {"q": {"a": 4.0, "b": 3.0, "c": 2.0, "d": 1.0}}
    ours = {"q": {"b": 4.0, "a": 3.0, "c": 2.0, "d": 1.0}}
    agreement = ranking_agreement(ours, reference).iloc[0]
    assert agreement["ktu"] == pytest.approx(4 / 6)
    weights = 0.95 ** np.arange(4)
    assert agreement["rbo"] == pytest.approx((weights * [0, 1, 1, 1]).sum() / weights.sum())
    # A different document at rank 3. RBO: overlaps 1/1, 2/2, 2/3. KTU as repro_eval defines
    # it ranks both lists' documents by their position in the sorted union and correlates
    # those positions rank by rank: [0, 1, 2] against [0, 1, 3] are in the same order.
    other = {"q": {"a": 4.0, "b": 3.0, "e": 2.0}}
    short = {"q": {"a": 4.0, "b": 3.0, "c": 2.0}}
    agreement = ranking_agreement(other, short).iloc[0]
    weights = 0.95 ** np.arange(3)
    assert agreement["rbo"] == pytest.approx((weights * [1, 1, 2 / 3]).sum() / weights.sum())
    assert agreement["ktu"] == pytest.approx(1.0)


def test_effect_ratio_and_delta_relative_improvement_by_hand():
    base = scores({"q1": 0.2, "q2": 0.4})
    adv = scores({"q1": 0.5, "q2": 0.5})  # reference improvement: mean(0.3, 0.1) = 0.2
    rep_base = scores({"q1": 0.2, "q2": 0.5})
    rep_adv = scores({"q1": 0.4, "q2": 0.6})  # rerun improvement: mean(0.2, 0.1) = 0.15
    values = effect_agreement(rep_base, rep_adv, base, adv, ["nDCG@10"])["nDCG@10"]
    assert values["ER"] == pytest.approx(0.15 / 0.2)
    ri_reference = (0.5 - 0.3) / 0.3
    ri_rerun = (0.5 - 0.35) / 0.35
    assert values["dRI"] == pytest.approx(ri_reference - ri_rerun)
    same = effect_agreement(base, adv, base, adv, ["nDCG@10"])["nDCG@10"]
    assert same["ER"] == pytest.approx(1.0) and same["dRI"] == pytest.approx(0.0)


def test_a_changed_run_differs_and_a_missing_one_is_named(tmp_path):
    changed = {q: dict(docs) for q, docs in RUN.items()}
    changed["q1"] = {"d2": 3.0, "d4": 2.0, "d1": 1.0, "d3": 0.5}
    qrels = write_qrels(tmp_path / "qrels")
    pairs = [
        RunPair(
            "d", "first-stage/x", write_run(tmp_path / "ours/x.trec", changed),
            write_run(tmp_path / "ref/x.trec", RUN), qrels,
        ),
        RunPair(
            "d", "first-stage/y", write_run(tmp_path / "ours/y.trec", RUN),
            str(tmp_path / "ref/nothing.trec"), qrels,
        ),
    ]  # fmt: skip
    runs, topics, _ = compare_runs(pairs, ["nDCG@10"], tolerance=0.01)
    x, y = runs.iloc[0], runs.iloc[1]
    assert x["status"] == "differs" and x["ktu"] < 1 and x["rbo"] < 1
    assert x["nDCG@10 rmse"] > 0 and x["nDCG@10 delta"] < 0
    assert y["status"] == "missing" and "nothing.trec" in y["note"]
    q1 = topics[topics["query_id"] == "q1"].iloc[0]
    assert q1["ktu"] < 1 and set(topics[topics["query_id"] != "q1"]["ktu"]) == {1.0}
    within, _, _ = compare_runs(pairs[:1], ["nDCG@10"], tolerance=1.0)
    assert within.iloc[0]["status"] == "within tolerance"


def test_written_tables_and_reference_layouts(tmp_path):
    qrels = write_qrels(tmp_path / "qrels")
    base = write_run(tmp_path / "ours/d/first-stage/b.trec", RUN)
    better = dict(RUN, q1={"d1": 3.0, "d3": 2.5, "d2": 2.0, "d4": 0.5})
    adv = write_run(tmp_path / "ours/d/rerank/b/a.trec", better)
    for run in ("first-stage/b", "rerank/b/a"):
        source = tmp_path / "ours/d" / f"{run}.trec"
        target = tmp_path / "results/runs/d" / f"{run}.trec"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
    folder = reference_runs_folder(tmp_path / "results")
    assert folder == tmp_path / "results/runs"
    assert reference_runs_folder(folder) == folder
    pairs = [
        RunPair("d", "first-stage/b", base, str(folder / "d/first-stage/b.trec"), qrels),
        RunPair("d", "rerank/b/a", adv, str(folder / "d/rerank/b/a.trec"), qrels),
    ]
    out = tmp_path / "out"
    write_comparison(
        pairs, ["nDCG@10"], [("d", "first-stage/b", "rerank/b/a")], str(folder),
        out / "c.tsv", out / "c.topics.tsv", out / "c.effects.tsv", out / "c.md",
    )  # fmt: skip
    effects = pd.read_csv(out / "c.effects.tsv", sep="\t")
    assert effects.loc[0, "nDCG@10 ER"] == pytest.approx(1.0)
    assert effects.loc[0, "nDCG@10 dRI"] == pytest.approx(0.0)
    markdown = (out / "c.md").read_text()
    assert "2 reproduced, 0 within tolerance, 0 differs, 0 missing" in markdown
    assert "| d         | first-stage/b" in markdown or "first-stage/b" in markdown
    assert not math.isnan(pd.read_csv(out / "c.tsv", sep="\t").loc[0, "ktu"])
