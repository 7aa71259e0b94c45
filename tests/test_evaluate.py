"""Correctness of irflow.evaluate: hand-computed cases and a cross-check against trec_eval's code.

Conventions being pinned (trec_eval's):

* a query's documents are ranked by score descending, ties broken by doc id descending in
  plain string order, so 'd9' ranks before 'd10' when their scores tie;
* nDCG@10 (trec_eval ``ndcg_cut.10``) uses gain = label and discount log2(rank + 1); the ideal
  DCG is built from *all* judged labels of the query, retrieved or not;
* binary measures count a document as relevant when label >= rel; with rel=2 on graded qrels a
  label-1 document is non-relevant;
* P@10 always divides by 10; R-Prec looks at the top R where R = number of relevant docs;
* a judged query missing from the run scores 0 on everything (trec_eval -c).
"""

from __future__ import annotations

import math
import random
import shutil
import subprocess

import pytest
import pytrec_eval
from workflow_helpers import SHARED_DATA, require_data

from irflow.evaluate import DEFAULT_MEASURES, evaluate_run
from irflow.io import InputError, read_qrels, read_run_dict, write_trec_qrels, write_trec_run

log2 = math.log2


# --------------------------------------------------------------------------------------------
# The hand-computed fixture (rel = 2).
# --------------------------------------------------------------------------------------------
QRELS = {
    # q1: graded labels, one relevant doc (d5) never retrieved, a label-0 and a label-1 doc.
    "q1": {"d1": 3, "d2": 2, "d3": 1, "d4": 0, "d5": 2},
    # q2: d9 / d10 tie in score; only d10 is relevant.
    "q2": {"d10": 2, "d9": 0},
    # q3: the only relevant doc (d11) sits at rank 11; d12 (label 1) at rank 12.
    "q3": {"d11": 2, "d12": 1, "d01": 0},
    # q4: judged, but missing from the run.
    "q4": {"d1": 2},
    # q5: no document reaches rel=2 (labels 1 and 0 only).
    "q5": {"dA": 1, "dB": 0},
}
RUN = {
    # Ranking: d2 (3.0); then d4, d3 tie at 2.0 -> doc id descending: 'd4' > 'd3' so d4 first;
    # then d1 (1.0); then unjudged d6 (0.5).
    #   rank 1 d2 (label 2)  rank 2 d4 (0)  rank 3 d3 (1)  rank 4 d1 (3)  rank 5 d6 (unjudged)
    "q1": {"d1": 1.0, "d2": 3.0, "d3": 2.0, "d4": 2.0, "d6": 0.5},
    # Inserted d10 first so that a stable sort by score alone would put d10 first; trec_eval
    # puts 'd9' first because 'd9' > 'd10' as strings. rank 1 d9 (0), rank 2 d10 (2).
    "q2": {"d10": 1.0, "d9": 1.0},
    # d01..d12 with scores 12..1: d01 rank 1, ..., d11 rank 11, d12 rank 12.
    "q3": {f"d{i:02d}": float(13 - i) for i in range(1, 13)},
    # rank 1 dB (0), rank 2 dA (1).
    "q5": {"dA": 1.0, "dB": 2.0},
}

# q1 nDCG@10:
#   DCG   = 2/log2(2) + 0/log2(3) + 1/log2(4) + 3/log2(5) = 2 + 0 + 0.5 + 1.292030 = 3.792030
#   ideal labels 3,2,2,1,0 (d5 counts though never retrieved):
#   IDCG  = 3/log2(2) + 2/log2(3) + 2/log2(4) + 1/log2(5) = 3 + 1.261860 + 1 + 0.430677 = 5.692536
#   nDCG  = 3.792030 / 5.692536 = 0.666141
Q1_NDCG = (2 / log2(2) + 0 / log2(3) + 1 / log2(4) + 3 / log2(5)) / (
    3 / log2(2) + 2 / log2(3) + 2 / log2(4) + 1 / log2(5)
)
# q2 nDCG@10: DCG = 0/log2(2) + 2/log2(3) = 1.261860; IDCG = 2/log2(2) = 2 -> 0.630930
Q2_NDCG = (2 / log2(3)) / 2
# q5 nDCG@10 (graded gains, rel is irrelevant to nDCG): DCG = 0 + 1/log2(3) = 0.630930; IDCG = 1
Q5_NDCG = 1 / log2(3)

EXPECTED = {
    # q1 at rel=2: relevant = {d1, d2, d5} so R = 3 (d3 label 1 and d4 label 0 are not).
    #   relevant retrieved at ranks 1 (d2) and 4 (d1).
    #   RR@10 = 1/1; AP = (1/1 + 2/4) / 3 = 0.5; R-Prec = |{d2}| / 3 among top 3 (d2,d4,d3);
    #   P@10 = 2/10; R@100 = 2/3.
    "q1": {
        "nDCG@10": Q1_NDCG,
        "RR@10": 1.0,
        "AP": 0.5,
        "R-Prec": 1 / 3,
        "P@10": 0.2,
        "R@100": 2 / 3,
    },
    # q2: relevant d10 at rank 2. RR = 1/2; AP = (1/2)/1; R-Prec: top 1 = d9 -> 0;
    #   P@10 = 1/10; R@100 = 1/1.
    "q2": {"nDCG@10": Q2_NDCG, "RR@10": 0.5, "AP": 0.5, "R-Prec": 0.0, "P@10": 0.1, "R@100": 1.0},
    # q3: relevant d11 at rank 11. nDCG@10 = 0 (top 10 all gain 0); RR@10 = 0 (cut at 10);
    #   AP = (1/11)/1 = 0.090909; R-Prec: top 1 = d01 -> 0; P@10 = 0; R@100 = 1/1.
    "q3": {"nDCG@10": 0.0, "RR@10": 0.0, "AP": 1 / 11, "R-Prec": 0.0, "P@10": 0.0, "R@100": 1.0},
    # q4: missing from the run: 0 everywhere.
    "q4": dict.fromkeys(DEFAULT_MEASURES, 0.0),
    # q5: no relevant docs at rel=2 -> every binary measure is 0; nDCG uses the label-1 gain.
    "q5": {"nDCG@10": Q5_NDCG, "RR@10": 0.0, "AP": 0.0, "R-Prec": 0.0, "P@10": 0.0, "R@100": 0.0},
}
# Means over the 5 judged queries (q4 included as 0):
#   nDCG@10 = (0.666141 + 0.630930 + 0 + 0 + 0.630930) / 5 = 0.385600
#   RR@10   = (1 + 0.5 + 0 + 0 + 0) / 5                   = 0.3
#   AP      = (0.5 + 0.5 + 0.090909 + 0 + 0) / 5          = 0.218182
#   R-Prec  = (1/3 + 0 + 0 + 0 + 0) / 5                   = 0.066667
#   P@10    = (0.2 + 0.1 + 0 + 0 + 0) / 5                 = 0.06
#   R@100   = (2/3 + 1 + 1 + 0 + 0) / 5                   = 0.533333
EXPECTED_MEAN = {
    "nDCG@10": 0.385600,
    "RR@10": 0.3,
    "AP": 0.218182,
    "R-Prec": 0.066667,
    "P@10": 0.06,
    "R@100": 0.533333,
}


def _case(qid, measure):
    return pytest.param(qid, measure, id=f"{qid}-{measure}")


@pytest.fixture(scope="module")
def hand_result():
    return evaluate_run(RUN, QRELS, rel=2)


def test_default_measures_are_the_documented_six():
    assert list(DEFAULT_MEASURES) == ["nDCG@10", "RR@10", "AP", "R-Prec", "P@10", "R@100"]


@pytest.mark.parametrize(
    ("qid", "measure"), [_case(q, m) for q in sorted(EXPECTED) for m in DEFAULT_MEASURES]
)
def test_hand_computed_per_query(hand_result, qid, measure):
    _, per_query = hand_result
    assert per_query.loc[qid, measure] == pytest.approx(EXPECTED[qid][measure], abs=1e-6)


@pytest.mark.parametrize(
    "measure",
    list(DEFAULT_MEASURES),
)
def test_hand_computed_means(hand_result, measure):
    mean, _ = hand_result
    assert mean[measure] == pytest.approx(EXPECTED_MEAN[measure], abs=1e-6)


def test_coverage_counts_and_table_shape(hand_result):
    mean, per_query = hand_result
    assert mean["queries"] == 5
    assert mean["queries_missing_from_run"] == 1  # q4
    assert mean["unjudged_run_queries_dropped"] == 0
    assert per_query.index.name == "query_id"
    assert list(per_query.index) == ["q1", "q2", "q3", "q4", "q5"]
    assert list(per_query.columns) == list(DEFAULT_MEASURES)


def test_tie_break_is_doc_id_descending_as_strings():
    # d9 and d10 tie at 1.0; 'd9' > 'd10' lexicographically, so d9 is rank 1 whichever order
    # the dict lists them in. Only d10 is relevant -> RR = 1/2 and R-Prec (top 1 = d9) = 0.
    qrels = {"q": {"d10": 2, "d9": 0}}
    for run in ({"q": {"d10": 1.0, "d9": 1.0}}, {"q": {"d9": 1.0, "d10": 1.0}}):
        _, per_query = evaluate_run(run, qrels, rel=2)
        assert per_query.loc["q", "RR@10"] == pytest.approx(0.5, abs=1e-12)
        assert per_query.loc["q", "R-Prec"] == pytest.approx(0.0, abs=1e-12)
    # Flip which one is relevant: d9 at rank 1 -> RR = 1, R-Prec = 1.
    _, per_query = evaluate_run({"q": {"d10": 1.0, "d9": 1.0}}, {"q": {"d9": 2}}, rel=2)
    assert per_query.loc["q", "RR@10"] == pytest.approx(1.0, abs=1e-12)
    assert per_query.loc["q", "R-Prec"] == pytest.approx(1.0, abs=1e-12)


def test_tie_at_the_cutoff_decides_p_at_10():
    # 9 docs with distinct high scores (label 0) take ranks 1..9; d10 and d9 tie at 1.0 for
    # ranks 10/11: 'd9' > 'd10' as strings -> d9 is rank 10, d10 rank 11. Only d10 is relevant.
    run = {"q": {f"x{i}": 10.0 + i for i in range(9)} | {"d10": 1.0, "d9": 1.0}}
    qrels = {"q": {"d10": 2} | {f"x{i}": 0 for i in range(9)}}
    _, per_query = evaluate_run(run, qrels, rel=2)
    # d10 at rank 11: P@10 = 0; R@100 = 1; AP = 1/11; nDCG@10 = 0.
    assert per_query.loc["q", "P@10"] == pytest.approx(0.0, abs=1e-12)
    assert per_query.loc["q", "R@100"] == pytest.approx(1.0, abs=1e-12)
    assert per_query.loc["q", "AP"] == pytest.approx(1 / 11, abs=1e-12)
    assert per_query.loc["q", "nDCG@10"] == pytest.approx(0.0, abs=1e-12)
    # Make d9 the relevant one instead: rank 10 -> P@10 = 1/10, nDCG@10 = (2/log2(11)) / 2.
    qrels = {"q": {"d9": 2} | {f"x{i}": 0 for i in range(9)}}
    _, per_query = evaluate_run(run, qrels, rel=2)
    assert per_query.loc["q", "P@10"] == pytest.approx(0.1, abs=1e-12)
    assert per_query.loc["q", "nDCG@10"] == pytest.approx((2 / log2(11)) / 2, abs=1e-12)
    assert per_query.loc["q", "RR@10"] == pytest.approx(0.1, abs=1e-12)


def test_label_one_is_non_relevant_at_rel_2_but_relevant_at_rel_1():
    run = {"q": {"a": 2.0, "b": 1.0}}
    qrels = {"q": {"a": 1, "b": 2}}
    # rel=2: only b (rank 2) is relevant. AP = (1/2)/1; RR = 1/2; P@10 = 1/10; R-Prec = 0.
    mean, _ = evaluate_run(run, qrels, rel=2)
    assert mean["AP"] == pytest.approx(0.5, abs=1e-12)
    assert mean["RR@10"] == pytest.approx(0.5, abs=1e-12)
    assert mean["P@10"] == pytest.approx(0.1, abs=1e-12)
    assert mean["R-Prec"] == pytest.approx(0.0, abs=1e-12)
    # rel=1: both relevant at ranks 1, 2. AP = (1/1 + 2/2)/2 = 1; RR = 1; P@10 = 2/10;
    # R-Prec = 2/2.
    mean, _ = evaluate_run(run, qrels, rel=1)
    assert mean["AP"] == pytest.approx(1.0, abs=1e-12)
    assert mean["RR@10"] == pytest.approx(1.0, abs=1e-12)
    assert mean["P@10"] == pytest.approx(0.2, abs=1e-12)
    assert mean["R-Prec"] == pytest.approx(1.0, abs=1e-12)
    # nDCG does not depend on rel: DCG = 1/1 + 2/log2(3); IDCG = 2/1 + 1/log2(3).
    ndcg = (1 + 2 / log2(3)) / (2 + 1 / log2(3))
    for rel in (1, 2):
        mean, _ = evaluate_run(run, qrels, rel=rel)
        assert mean["nDCG@10"] == pytest.approx(ndcg, abs=1e-12)


def test_r_at_100_ignores_docs_below_rank_100():
    # Relevant docs r1 at rank 1 and r2 at rank 102 (100 unjudged filler docs in between).
    run = {"q": {"r1": 1000.0, "r2": 0.5} | {f"f{i:03d}": 1.0 + i for i in range(100)}}
    # Fillers score 1..100, so the ranking is r1 (1000), f099, ..., f000 (ranks 2..101), then
    # r2 (0.5) at rank 102.
    qrels = {"q": {"r1": 2, "r2": 2}}
    mean, _ = evaluate_run(run, qrels, rel=2)
    # R@100 = 1/2; AP = (1/1 + 2/102)/2; R-Prec (top 2: r1, f099) = 1/2.
    assert mean["R@100"] == pytest.approx(0.5, abs=1e-12)
    assert mean["AP"] == pytest.approx((1 + 2 / 102) / 2, abs=1e-12)
    assert mean["R-Prec"] == pytest.approx(0.5, abs=1e-12)


# --------------------------------------------------------------------------------------------
# Query coverage policy.
# --------------------------------------------------------------------------------------------
def test_unjudged_run_query_is_an_error_by_default():
    run = dict(RUN) | {"q_extra": {"d1": 1.0}}
    with pytest.raises(InputError, match=r"myrun: 1 run queries have no judgements.*q_extra"):
        evaluate_run(run, QRELS, rel=2, run_name="myrun")
    with pytest.raises(InputError, match="q_extra"):
        evaluate_run(run, QRELS, rel=2, unjudged="error")


def test_unjudged_run_queries_dropped_and_counted_in_report_mode(hand_result):
    run = dict(RUN) | {"q_extra": {"d1": 1.0}, "q_other": {"d2": 5.0}}
    mean, per_query = evaluate_run(run, QRELS, rel=2, unjudged="report")
    ref_mean, ref_per_query = hand_result
    assert mean["unjudged_run_queries_dropped"] == 2
    assert mean["queries"] == 5
    assert mean["queries_missing_from_run"] == 1
    assert "q_extra" not in per_query.index and "q_other" not in per_query.index
    for measure in DEFAULT_MEASURES:
        assert mean[measure] == pytest.approx(ref_mean[measure], abs=1e-15)
        assert list(per_query[measure]) == list(ref_per_query[measure])


def test_invalid_unjudged_policy_and_bad_measure():
    with pytest.raises(ValueError, match="unjudged"):
        evaluate_run(RUN, QRELS, rel=2, unjudged="ignore")
    with pytest.raises(InputError, match="bogus"):
        evaluate_run(RUN, QRELS, rel=2, measures={"bogus": "NotAMeasure@3"})


def test_all_queries_missing_from_run_scores_zero():
    mean, per_query = evaluate_run({}, {"a": {"d": 2}, "b": {"d": 1}}, rel=2)
    assert mean["queries"] == 2
    assert mean["queries_missing_from_run"] == 2
    for measure in DEFAULT_MEASURES:
        assert mean[measure] == 0.0
        assert (per_query[measure] == 0.0).all()


# --------------------------------------------------------------------------------------------
# Cross-check against trec_eval's C code (pytrec_eval) on generated data with many ties.
# --------------------------------------------------------------------------------------------
PYTREC = {
    "nDCG@10": "ndcg_cut_10",
    "AP": "map",
    "R-Prec": "Rprec",
    "P@10": "P_10",
    "R@100": "recall_100",
}


def _ranked(docs):
    # trec_eval order, written independently of irflow.io.ranked: score desc, doc id desc.
    return [d for d, _ in sorted(docs.items(), key=lambda kv: (-kv[1], _Desc(kv[0])))]


class _Desc:
    def __init__(self, s):
        self.s = s

    def __lt__(self, other):
        return self.s > other.s

    def __eq__(self, other):
        return self.s == other.s


def _rr_at_10(docs, judged, rel):
    for rank, doc in enumerate(_ranked(docs)[:10], start=1):
        if judged.get(doc, 0) >= rel:
            return 1.0 / rank
    return 0.0


def _generated(seed=20240501, graded=True):
    rng = random.Random(seed)
    labels = [0, 0, 0, 1, 1, 2, 3] if graded else [0, 0, 0, 1]
    pool = [f"d{n}" for n in range(300)]  # ids of 2..4 chars: 'd9' vs 'd10' vs 'd100'
    qrels, run = {}, {}
    for q in range(30):
        qid = f"q{q}"
        judged = rng.sample(pool, rng.randint(5, 40))
        qrels[qid] = {d: rng.choice(labels) for d in judged}
        retrieved = rng.sample(pool, rng.randint(20, 150))
        # Scores from a coarse grid -> many ties, resolved by doc id.
        run[qid] = {d: rng.randint(0, 12) / 4 for d in retrieved}
    # One query whose only relevant docs are ranked below 10 (scores lower than 11 fillers).
    qrels["qz"] = {"d5": 3, "d50": 2, "d1": 0}
    run["qz"] = {f"d{n}": 10.0 for n in range(100, 111)} | {"d5": 1.0, "d50": 1.0, "d1": 9.0}
    return qrels, run


def _pytrec(qrels, run, rel):
    evaluator = pytrec_eval.RelevanceEvaluator(
        qrels,
        {"ndcg_cut.10", "recip_rank", "map", "Rprec", "P.10", "recall.100"},
        relevance_level=rel,
    )
    return evaluator.evaluate(run)


@pytest.mark.parametrize(("rel", "graded"), [(2, True), (1, True), (1, False)])
def test_matches_pytrec_eval_with_full_coverage(rel, graded):
    qrels, run = _generated(graded=graded)
    mean, per_query = evaluate_run(run, qrels, rel=rel)
    reference = _pytrec(qrels, run, rel)
    assert set(reference) == set(qrels)
    assert mean["queries"] == len(qrels) and mean["queries_missing_from_run"] == 0
    for column, name in PYTREC.items():
        expected = sum(reference[q][name] for q in qrels) / len(qrels)
        assert mean[column] == pytest.approx(expected, abs=1e-9), column
        for qid in qrels:
            assert per_query.loc[qid, column] == pytest.approx(reference[qid][name], abs=1e-9)


def test_matches_pytrec_eval_with_missing_queries():
    qrels, run = _generated(seed=7)
    for qid in ("q3", "q11", "q29"):
        del run[qid]
    mean, per_query = evaluate_run(run, qrels, rel=2)
    reference = _pytrec(qrels, run, 2)
    assert set(reference) == set(qrels) - {"q3", "q11", "q29"}
    assert mean["queries_missing_from_run"] == 3
    for column, name in PYTREC.items():
        # trec_eval -c: the missing queries count as zeros in the mean.
        expected = sum(reference[q][name] for q in reference) / len(qrels)
        assert mean[column] == pytest.approx(expected, abs=1e-9), column
        assert per_query.loc[["q3", "q11", "q29"], column].eq(0.0).all()


def test_reference_rr_at_10_agrees_with_trec_eval_on_truncated_run():
    # Sanity check of the reference used below: RR@10 == trec_eval's recip_rank computed on the
    # run truncated to its top 10 (in trec_eval order).
    qrels, run = _generated()
    top10 = {q: {d: run[q][d] for d in _ranked(run[q])[:10]} for q in run}
    reference = _pytrec(qrels, top10, 2)
    for qid in qrels:
        assert _rr_at_10(run[qid], qrels[qid], 2) == pytest.approx(
            reference[qid]["recip_rank"], abs=1e-12
        )
    # ... and the generated data really exercises the cutoff (qz: first relevant at rank 13).
    full = _pytrec(qrels, run, 2)
    assert full["qz"]["recip_rank"] == pytest.approx(1 / 13, abs=1e-12)
    assert _rr_at_10(run["qz"], qrels["qz"], 2) == 0.0


@pytest.mark.parametrize("rel", [1, 2])
def test_rr_at_10_matches_reference(rel):
    qrels, run = _generated()
    mean, per_query = evaluate_run(run, qrels, rel=rel)
    expected = {q: _rr_at_10(run[q], qrels[q], rel) for q in qrels}
    for qid in qrels:
        assert per_query.loc[qid, "RR@10"] == pytest.approx(expected[qid], abs=1e-9), qid
    assert mean["RR@10"] == pytest.approx(sum(expected.values()) / len(qrels), abs=1e-9)


def test_evaluation_survives_trec_file_round_trip(tmp_path):
    # Writing the run with write_trec_run and reading it back gives identical measures.
    qrels, run = _generated(seed=3)
    write_trec_run(tmp_path / "run.trec", run, tag="t")
    write_trec_qrels(tmp_path / "qrels.txt", qrels)
    direct, _ = evaluate_run(run, qrels, rel=2)
    reread, _ = evaluate_run(
        read_run_dict(tmp_path / "run.trec"), read_qrels(tmp_path / "qrels.txt"), rel=2
    )
    assert direct == reread


@pytest.mark.skipif(shutil.which("trec_eval") is None, reason="trec_eval binary not installed")
def test_matches_trec_eval_binary(tmp_path):
    qrels, run = _generated(seed=11)
    write_trec_run(tmp_path / "run.trec", run, tag="t")
    write_trec_qrels(tmp_path / "qrels.txt", qrels)
    out = subprocess.run(
        [
            "trec_eval",
            "-m",
            "ndcg_cut.10",
            "-m",
            "map",
            "-m",
            "Rprec",
            "-m",
            "P.10",
            "-m",
            "recall.100",
            "-l",
            "2",
            str(tmp_path / "qrels.txt"),
            str(tmp_path / "run.trec"),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    values = {}
    for line in out.splitlines():
        name, qid, value = line.split()
        if qid == "all":
            values[name] = float(value)
    mean, _ = evaluate_run(run, qrels, rel=2)
    for column, name in PYTREC.items():
        assert mean[column] == pytest.approx(values[name], abs=1e-4), column


# --------------------------------------------------------------------------------------------
# NIST trec_eval 10.0's own output for the shipped DL19 / DL20 BM25 runs
# (../shared/data/trec-eval-reference, see its README): an engine independent of pytrec_eval.
# --------------------------------------------------------------------------------------------
# trec_eval measure name -> irflow column (DEFAULT_MEASURES at rel=2).
TREC_EVAL_NAMES = {
    "ndcg_cut_10": "nDCG@10",
    "recip_rank@10": "RR@10",
    "map": "AP",
    "Rprec": "R-Prec",
    "P_10": "P@10",
    "recall_100": "R@100",
}


def _trec_eval_reference(name: str) -> dict[str, dict[str, str]]:
    """{query or 'all': {measure: value as trec_eval printed it}} from the reference TSV."""
    lines = (SHARED_DATA / "trec-eval-reference" / f"{name}.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["query", "measure", "value"]
    reference: dict[str, dict[str, str]] = {}
    for line in lines[1:]:
        query, measure, value = line.split("\t")
        assert measure not in reference.setdefault(query, {}), (query, measure)
        reference[query][measure] = value
    return reference


@pytest.mark.parametrize("name", ["dl19-bm25", "dl20-bm25"])
def test_per_query_values_equal_nist_trec_eval(name):
    collection = SHARED_DATA / f"{name}-top100"
    require_data(f"trec-eval-reference/{name}.tsv", f"{name}-top100")
    reference = _trec_eval_reference(name)
    run = read_run_dict(collection / "runs" / "bm25.trec")
    qrels = read_qrels(collection / "qrels" / "test.tsv")
    mean, per_query = evaluate_run(run, qrels, rel=2)

    # Every measure the reference holds is one irflow computes, and it covers every query.
    measures = {m for values in reference.values() for m in values}
    assert measures == set(TREC_EVAL_NAMES)
    # trec_eval lists the queries both judged and in the run; the run covers every judged one.
    assert set(reference) - {"all"} == set(qrels) == set(per_query.index)
    assert mean["queries_missing_from_run"] == 0
    compared = 0
    for query, values in reference.items():
        for measure, printed in values.items():
            column = TREC_EVAL_NAMES[measure]
            ours = mean[column] if query == "all" else per_query.loc[query, column]
            # To the precision trec_eval prints (4 decimals): the printed text must match.
            assert f"{ours:.4f}" == printed, (name, query, measure, ours, printed)
            compared += 1
    assert compared == len(TREC_EVAL_NAMES) * len(reference)
