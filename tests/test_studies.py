"""Study tables: references, paired tests, intervals and Holm's correction against scipy, exact
enumeration of sign flips and hand computations."""

import itertools
import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from irflow.io import InputError
from irflow.studies import (
    build_study_table,
    holm,
    paired_p_value,
    paired_test,
    plan_rows,
    two_level_bootstrap,
    write_study_table,
)

# A mixed-sign case with a negative mean difference and a mid-range p: of the 2^8 = 256 sign
# flips, exactly 128 reach |mean| >= 0.05, so the two-sided p is 0.5 (one-sided: 0.25 and 0.81).
MIXED = np.array([-0.3, 0.1, -0.2, 0.05, -0.15, -0.1, 0.25, -0.05])


def exact_sign_flip_p(diff: np.ndarray) -> float:
    """Two-sided p of the mean paired difference over all 2^n sign flips."""
    signs = np.array(list(itertools.product([-1.0, 1.0], repeat=len(diff))))
    flipped = np.abs((signs * diff).mean(axis=1))
    return float(np.mean(flipped >= abs(diff.mean()) - 1e-12))


def test_holm_matches_hand_computation():
    # p sorted: 0.01 (x3 = 0.03), 0.02 (x2 = 0.04), 0.04 (x1 = 0.04); input order kept.
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    # Values cap at 1, and the cap carries over to later steps.
    assert holm([0.5, 0.001, 0.6]) == pytest.approx([1.0, 0.003, 1.0])
    assert holm([]) == []


def test_holm_takes_the_running_maximum():
    # Sorted: 0.01 x3 = 0.03; 0.03 x2 = 0.06; 0.04 x1 = 0.04, raised to the running max 0.06.
    # Without the running maximum the largest raw p would be adjusted to 0.04 < 0.05 while a
    # smaller one is at 0.06: a rejection that Holm's step-down procedure never makes.
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    # Untested comparisons (NaN) stay NaN and leave the family: m = 2 here.
    adjusted = holm([0.02, math.nan, 0.04])
    assert adjusted[0] == pytest.approx(0.04) and adjusted[2] == pytest.approx(0.04)
    assert math.isnan(adjusted[1])


def test_t_test_matches_formula_and_scipy():
    a = np.array([0.5, 0.7, 0.2, 0.9, 0.4])
    b = np.array([0.4, 0.5, 0.3, 0.6, 0.1])
    d = a - b  # 0.1, 0.2, -0.1, 0.3, 0.3
    se = d.std(ddof=1) / math.sqrt(len(d))
    t = d.mean() / se
    expected = 2 * stats.t.sf(abs(t), df=len(d) - 1)
    result = paired_test(a, b, "t-test")
    assert result.p == pytest.approx(expected, rel=1e-12)
    assert result.p == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-12)
    # The 95 % interval of the mean difference: mean ± t(0.975, n-1) · s/√n.
    half = stats.t.ppf(0.975, df=len(d) - 1) * se
    assert (result.ci_low, result.ci_high) == pytest.approx((d.mean() - half, d.mean() + half))
    assert result.delta == pytest.approx(d.mean()) and result.note == ""
    # The mixed-sign case: a mid-range two-sided p, the same as scipy's.
    reference = np.full(len(MIXED), 0.5)
    p = paired_p_value(reference + MIXED, reference, "t-test")
    assert 0.2 < p < 0.6
    assert p == pytest.approx(stats.ttest_rel(reference + MIXED, reference).pvalue, rel=1e-12)


def test_randomization_is_two_sided_exact_on_small_n():
    reference = np.full(len(MIXED), 0.5)
    for diff in (MIXED, -MIXED):  # a negative and a positive mean difference
        p = paired_p_value(reference + diff, reference, "randomization")
        assert p == pytest.approx(exact_sign_flip_p(diff), abs=1e-12)
        assert p == pytest.approx(0.5, abs=1e-12)
        scipy_p = stats.permutation_test(
            (reference + diff, reference),
            lambda x, y, axis: np.mean(x - y, axis=axis),
            permutation_type="samples",
            vectorized=True,
            n_resamples=np.inf,
            alternative="two-sided",
        ).pvalue
        assert p == pytest.approx(scipy_p, abs=1e-12)
    # More cases, each enumerated exactly (2^n <= 10,000 flips), with p anywhere in (0, 1].
    rng = np.random.default_rng(7)
    for n in (2, 3, 5, 9, 12):
        diff = np.round(rng.normal(0.02, 0.1, size=n), 4)
        b = rng.uniform(0.2, 0.6, size=n)
        assert paired_p_value(b + diff, b, "randomization") == pytest.approx(
            exact_sign_flip_p(diff), abs=1e-9
        )


def test_randomization_monte_carlo_is_close_to_exact_and_seeded():
    # n = 16: 65,536 sign flips, more than the 10,000 drawn.
    rng = np.random.default_rng(11)
    diff = np.round(rng.normal(0.02, 0.1, size=16), 4)
    b = rng.uniform(0.2, 0.6, size=16)
    exact = exact_sign_flip_p(diff)
    p = paired_p_value(b + diff, b, "randomization", seed=3)
    assert 0.05 < exact < 0.95  # a mid-range case, not one that any test gets right
    assert abs(p - exact) < 4 * math.sqrt(exact * (1 - exact) / 10_000)
    assert p == paired_p_value(b + diff, b, "randomization", seed=3)
    # Every difference positive: no random flip reaches the observed mean, and the observed
    # assignment counts, on each side: p = 2 · 1/(N+1) > 0.
    x = np.linspace(0, 1, 30)
    y = x - 0.05 + 0.01 * np.sin(np.arange(30))
    assert paired_p_value(x, y, "randomization", seed=3) == pytest.approx(2 / 10_001)
    with pytest.raises(ValueError, match="allowed"):
        paired_p_value(x, y, "wilcoxon")


@pytest.mark.parametrize("test", ["t-test", "randomization"])
@pytest.mark.parametrize(
    ("a", "b", "reason"),
    [
        ([0.7], [0.2], "one query"),
        ([0.1, 0.2, 0.3], [0.1, 0.2, 0.3], "identical on all 3 queries"),
        ([0.6, 0.7, 0.8, 0.9], [0.5, 0.6, 0.7, 0.8], r"same difference \(\+0.1000\) on all 4"),
    ],
)
def test_degenerate_comparisons_have_no_p_value(a, b, reason, test):
    result = paired_test(a, b, test)
    assert math.isnan(result.p) and math.isnan(result.ci_low) and math.isnan(result.ci_high)
    assert pytest.approx(np.mean(a) - np.mean(b)) == result.delta
    assert re.search(reason, result.note), result.note


def write_pq(path, values, measure="nDCG@10"):
    pd.DataFrame({"query_id": [f"q{i}" for i in range(len(values))], measure: values}).to_csv(
        path, sep="\t", index=False
    )
    return str(path)


BASE = np.array([0.5, 0.4, 0.6, 0.3, 0.5, 0.45])
KD = BASE + np.array([0.2, 0.1, 0.25, 0.15, 0.3, 0.1])
UNTRAINED = KD - np.array([0.3, 0.2, 0.35, 0.25, 0.3, 0.4])


def test_references_and_table(tmp_path):
    rows = [
        ("base", "base", "d", "rerank/given/base"),
        ("kd", "kd", "d", "rerank/given/kd"),
        ("kd", "kd.untrained", "d", "rerank/given/kd.untrained"),
        ("base", "base.dim64", "d", "rerank/given/base.dim64"),
        ("kd", "kd.dim64", "d", "rerank/given/kd.dim64"),
    ]
    files = [
        write_pq(tmp_path / "a.tsv", BASE),
        write_pq(tmp_path / "b.tsv", KD),
        write_pq(tmp_path / "c.tsv", UNTRAINED),
        write_pq(tmp_path / "d.tsv", [0.4] * 6),
        write_pq(tmp_path / "e.tsv", [0.4] * 6),
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
    frame, deltas, _ = build_study_table("s", planned, ["nDCG@10"], alpha=0.05)
    kd, untrained, dim = frame.iloc[1], frame.iloc[2], frame.iloc[4]
    assert kd["nDCG@10"] == pytest.approx(KD.mean())
    assert kd["nDCG@10 delta"] == pytest.approx(0.1833333333)
    assert untrained["nDCG@10 delta"] == pytest.approx(-0.3)
    # kd vs base and untrained vs kd are tested; kd.dim64 vs base.dim64 (identical) is not.
    p_kd = stats.ttest_rel(KD, BASE).pvalue
    p_untrained = stats.ttest_rel(UNTRAINED, KD).pvalue
    assert kd["nDCG@10 p"] == pytest.approx(p_kd, rel=1e-12)
    assert untrained["nDCG@10 p"] == pytest.approx(p_untrained, rel=1e-12)
    interval = stats.ttest_rel(KD, BASE).confidence_interval(0.95)
    assert (kd["nDCG@10 ci_low"], kd["nDCG@10 ci_high"]) == pytest.approx(
        (interval.low, interval.high)
    )
    # Holm over the two tested comparisons (m = 2): the smaller p doubles, the larger stays.
    small, large = sorted([p_kd, p_untrained])
    assert small < 0.025 and large < 0.05
    expected_holm = [
        2 * small if p == small else max(2 * small, large) for p in (p_kd, p_untrained)
    ]
    assert [kd["nDCG@10 p_holm"], untrained["nDCG@10 p_holm"]] == pytest.approx(expected_holm)
    assert (kd["nDCG@10 sig"], untrained["nDCG@10 sig"]) == ("▲", "▼")
    assert kd["nDCG@10 note"] == untrained["nDCG@10 note"] == ""
    # The identical pair: no p-value, no interval, no mark, and a note saying why.
    assert math.isnan(dim["nDCG@10 p"]) and math.isnan(dim["nDCG@10 p_holm"])
    assert math.isnan(dim["nDCG@10 ci_low"]) and dim["nDCG@10 sig"] == ""
    assert dim["nDCG@10 note"] == "identical on all 6 queries: no test"
    # The baseline rows have no comparison at all.
    assert frame.iloc[0]["nDCG@10 sig"] == "" and math.isnan(frame.iloc[0]["nDCG@10 p"])
    assert len(deltas) == 3 * 6
    assert set(deltas["delta"].round(6)) >= {0.1, 0.2}


def test_table_with_one_query_marks_nothing(tmp_path):
    rows = [("a", "a", "d", "r/a"), ("b", "b", "d", "r/b")]
    files = [write_pq(tmp_path / "a.tsv", [0.2]), write_pq(tmp_path / "b.tsv", [0.9])]
    for test in ("t-test", "randomization"):
        frame, _, _ = build_study_table("s", plan_rows(rows, files, "a"), ["nDCG@10"], test=test)
        b = frame.iloc[1]
        assert b["nDCG@10 delta"] == pytest.approx(0.7)
        assert math.isnan(b["nDCG@10 p"]) and math.isnan(b["nDCG@10 p_holm"])
        assert b["nDCG@10 sig"] == "" and b["nDCG@10 note"] == "one query: no test"


def test_table_randomization_matches_exact_enumeration(tmp_path):
    rows = [("a", "a", "d", "r/a"), ("b", "b", "d", "r/b")]
    reference = np.full(len(MIXED), 0.5)
    files = [
        write_pq(tmp_path / "a.tsv", reference),
        write_pq(tmp_path / "b.tsv", reference + MIXED),
    ]
    frame, _, _ = build_study_table(
        "s", plan_rows(rows, files, "a"), ["nDCG@10"], test="randomization"
    )
    b = frame.iloc[1]
    assert b["nDCG@10 p"] == pytest.approx(0.5, abs=1e-12)
    assert b["nDCG@10 p_holm"] == pytest.approx(0.5, abs=1e-12)  # one comparison
    assert b["nDCG@10 sig"] == "" and b["nDCG@10 delta"] == pytest.approx(-0.05)
    with pytest.raises(ValueError, match="allowed"):
        build_study_table("s", plan_rows(rows, files, "a"), ["nDCG@10"], test="sign")


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
    rows = [("a", "a", "d", "r/a"), ("b", "b", "d", "r/b"), ("c", "c", "d", "r/c")]
    files = [
        write_pq(tmp_path / "a.tsv", [0.1, 0.2, 0.3]),
        write_pq(tmp_path / "b.tsv", [0.2, 0.4, 0.5]),
        write_pq(tmp_path / "c.tsv", [0.2, 0.3, 0.4]),  # +0.1 on every query: not tested
    ]
    spec = {"arms": ["a", "b", "c"], "measures": ["nDCG@10"], "description": "toy"}
    out = tmp_path / "out"
    write_study_table(
        "toy", spec, rows, files, out / "t.tsv", out / "t.md", out / "t.per-query.tsv"
    )
    table = pd.read_csv(out / "t.tsv", sep="\t")
    assert list(table["arm"]) == ["a", "b", "c"]
    assert list(table.columns) == [
        "study", "dataset", "arm", "variant", "run", "reference", "seeds", "queries", "test",
        "nDCG@10", "nDCG@10 sd", "nDCG@10 delta", "nDCG@10 ci_low", "nDCG@10 ci_high", "nDCG@10 p",
        "nDCG@10 p_holm", "nDCG@10 sig", "nDCG@10 note",
    ]  # fmt: skip
    interval = stats.ttest_rel([0.2, 0.4, 0.5], [0.1, 0.2, 0.3]).confidence_interval(0.95)
    assert table.loc[1, "nDCG@10 ci_low"] == pytest.approx(interval.low, rel=1e-5)
    assert table.loc[1, "nDCG@10 ci_high"] == pytest.approx(interval.high, rel=1e-5)
    assert pd.isna(table.loc[2, "nDCG@10 p"]) and pd.isna(table.loc[2, "nDCG@10 p_holm"])
    assert table.loc[2, "nDCG@10 note"] == "the same difference (+0.1000) on all 3 queries: no test"
    markdown = (out / "t.md").read_text()
    assert f"(+0.1667)▲ [{interval.low:+.4f}, {interval.high:+.4f}] p=" in markdown
    assert "(+0.1000) p: –" in markdown
    assert "- d r/c nDCG@10: the same difference (+0.1000) on all 3 queries: no test" in markdown
    assert len(pd.read_csv(out / "t.per-query.tsv", sep="\t")) == 6
    assert "Smoke scale" not in markdown
    write_study_table(
        "toy", spec, rows, files, out / "t.tsv", out / "s.md", out / "t.per-query.tsv",
        scale="smoke",
    )  # fmt: skip
    smoke = (out / "s.md").read_text().splitlines()
    assert smoke[2] == "**Smoke scale: these numbers show that the pipeline runs, not findings.**"


# -- seed replicates ---------------------------------------------------------------------------
def test_two_level_bootstrap_without_seed_spread_is_the_query_bootstrap():
    rng = np.random.default_rng(3)
    a = rng.uniform(0, 1, 60)
    b = np.clip(a - 0.05 + rng.normal(0, 0.1, 60), 0, 1)
    result = two_level_bootstrap(np.column_stack([a] * 3), np.column_stack([b] * 3), seed=1)
    assert result.delta == pytest.approx((a - b).mean())
    # Seeds that agree add nothing: p and interval are close to the t-test's over queries.
    t_test = paired_test(a, b)
    assert result.p == pytest.approx(t_test.p, abs=0.02)
    assert result.ci_low == pytest.approx(t_test.ci_low, abs=0.01)
    assert result.ci_high == pytest.approx(t_test.ci_high, abs=0.01)


def test_two_level_bootstrap_counts_the_seed_spread():
    # Arm a beats b by 0.02 on every query on average, but its three seeds' means spread by
    # ±0.05: a test over per-query means across seeds (300 queries) calls it certain; the
    # two-level bootstrap does not.
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.8, 300)
    b = np.column_stack([base + rng.normal(0, 0.05, 300) for _ in range(3)])
    shifts = np.array([-0.03, 0.02, 0.07])
    a = np.column_stack([base + s + rng.normal(0, 0.05, 300) for s in shifts])
    pooled_means = paired_test(a.mean(axis=1), b.mean(axis=1))
    assert pooled_means.p < 1e-6
    result = two_level_bootstrap(a, b, seed=0)
    assert result.p > 0.05
    assert result.ci_low < 0 < result.ci_high
    assert result.delta == pytest.approx(pooled_means.delta)


def test_two_level_bootstrap_degenerate_cases_and_determinism():
    one = two_level_bootstrap([[0.5, 0.7]], [[0.4, 0.3]])
    assert math.isnan(one.p) and one.note == "one query: no test"
    same = two_level_bootstrap([[0.5] * 3, [0.2] * 3], [[0.5] * 3, [0.2] * 3])
    assert math.isnan(same.p) and same.note.startswith("identical on all 2 queries")
    a = np.array([[0.2, 0.3, 0.25], [0.6, 0.5, 0.55], [0.1, 0.2, 0.3]])
    b = np.array([[0.1, 0.2], [0.5, 0.6], [0.2, 0.1]])
    first, again = two_level_bootstrap(a, b, seed=7), two_level_bootstrap(a, b, seed=7)
    assert first == again and 0 < first.p <= 1


def test_replicated_arms_pool_into_one_row_with_mean_and_sd(tmp_path):
    values = {
        ("a", 1): [0.1, 0.2, 0.3],
        ("a", 2): [0.2, 0.2, 0.2],
        ("a", 3): [0.3, 0.3, 0.4],
        ("b", None): [0.5, 0.6, 0.4],
    }
    rows, files = [], []
    for (arm, seed), per_query in values.items():
        name = arm if seed is None else f"{arm}.seed{seed}"
        rows.append((arm, name, "d", f"first-stage/{name}", seed))
        files.append(write_pq(tmp_path / f"{name}.tsv", per_query))
    planned = plan_rows(rows, files, "b")
    assert [r.variant for r in planned] == ["trained"] * 4
    assert planned[0].reference == "first-stage/b"
    frame, deltas, replicates = build_study_table("s", planned, ["nDCG@10"])
    assert list(frame["run"]) == ["first-stage/a.seed{1,2,3}", "first-stage/b"]
    assert list(frame["seeds"]) == [3, 1]
    seed_means = [0.2, 0.2, 1 / 3]
    assert frame.loc[0, "nDCG@10"] == pytest.approx(np.mean(seed_means))
    assert frame.loc[0, "nDCG@10 sd"] == pytest.approx(np.std(seed_means, ddof=1))
    assert frame.loc[0, "nDCG@10 sd"] > 0 and pd.isna(frame.loc[1, "nDCG@10 sd"])
    assert frame.loc[0, "test"] == "two-level bootstrap"
    per_query_a = np.mean([values[("a", s)] for s in (1, 2, 3)], axis=0)
    expected = two_level_bootstrap(
        np.column_stack([values[("a", s)] for s in (1, 2, 3)]),
        np.array(values[("b", None)])[:, None],
    )
    assert frame.loc[0, "nDCG@10 p"] == pytest.approx(expected.p)
    assert frame.loc[0, "nDCG@10 delta"] == pytest.approx((per_query_a - [0.5, 0.6, 0.4]).mean())
    assert list(replicates["seed"]) == [1, 2, 3]
    assert list(replicates["nDCG@10"]) == pytest.approx(seed_means)
    assert set(deltas["run"]) == {"first-stage/a.seed{1,2,3}"}
    assert list(deltas["value"]) == pytest.approx(per_query_a)


def test_replicated_markdown_shows_the_spread(tmp_path):
    rows, files = [], []
    for seed, per_query in ((1, [0.1, 0.2, 0.3]), (2, [0.3, 0.3, 0.5])):
        rows.append(("a", f"a.seed{seed}", "d", f"rerank/r/a.seed{seed}", seed))
        files.append(write_pq(tmp_path / f"a{seed}.tsv", per_query))
    spec = {"arms": ["a"], "measures": ["nDCG@10"]}
    out = tmp_path / "out"
    write_study_table(
        "toy", spec, rows, files, out / "t.tsv", out / "t.md", out / "t.pq.tsv",
        seeds_out=out / "t.seeds.tsv",
    )  # fmt: skip
    markdown = (out / "t.md").read_text()
    assert f"0.2833 ± {np.std([0.2, 1.1 / 3], ddof=1):.4f}" in markdown
    assert "two-level paired bootstrap" in markdown
    assert len(pd.read_csv(out / "t.seeds.tsv", sep="\t")) == 2


def test_replicated_rows_print_their_spread_in_latex_and_the_report_view(tmp_path):
    from irflow.report.compact import compact_rows
    from irflow.report.latex import write_study_latex

    rows, files = [], []
    for arm, seed, per_query in (
        ("a", None, [0.1, 0.2, 0.3]),
        ("b", 1, [0.2, 0.3, 0.3]),
        ("b", 2, [0.4, 0.3, 0.5]),
    ):
        name = arm if seed is None else f"{arm}.seed{seed}"
        rows.append((arm, name, "d", f"rerank/r/{name}", seed))
        files.append(write_pq(tmp_path / f"{name}.tsv", per_query))
    spec = {"arms": ["a", "b"], "measures": ["nDCG@10"]}
    out = tmp_path / "out"
    frame = write_study_table(
        "toy", spec, rows, files, out / "t.tsv", out / "t.md", out / "t.pq.tsv"
    )
    sd = frame.loc[1, "nDCG@10 sd"]
    latex = write_study_latex("toy", spec, out / "t.tsv", out / "t.tex")
    assert rf"$\pm${sd:.4f}" in latex and "standard deviation over the seeds" in latex
    _, view = compact_rows(pd.read_csv(out / "t.tsv", sep="\t"), spec)
    cells = {row.arm: row.cells["nDCG@10"] for row in view}
    assert cells["b"].sd == pytest.approx(sd) and cells["a"].sd is None
    assert {row.arm: row.seeds for row in view} == {"a": 1, "b": 2}
