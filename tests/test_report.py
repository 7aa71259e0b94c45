"""The HTML report: sections from files (each optional), cost sums, a real browser's view of the
report a workflow run built, and the per-row reproduce command giving the same number."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from report_fixtures import (
    FIXTURE_STUDIES,
    study_report_inputs,
    tiny_beir,
    tiny_bi_encoder,
    tiny_config,
)
from workflow_helpers import REPO, offline_env, snakemake

from irflow.report import cost
from irflow.report.html import (
    SMOKE_NOTICE,
    ReportInputs,
    bootstrap_interval,
    render,
    training_data_tables,
    write_report,
)
from irflow.report.latex import escape, write_study_latex

TEMPLATE = REPO / "reports" / "templates" / "report.html.j2"


# ------------------------------------------------------------------------------------------
# A small DOM reader (the stdlib's HTML parser): tables by id, figures and their SVG content
# ------------------------------------------------------------------------------------------
class Dom(HTMLParser):
    def __init__(self, html: str):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.headers: dict[str, list[str]] = {}
        self.figures: list[dict] = []
        self.tags: dict[str, int] = {}
        self.links: list[str] = []
        self.details: dict[str, list[str]] = {}  # <details> id -> ids of the tables in it
        self.table_classes: dict[str, str] = {}
        self._details: list[str] = []
        self._article: str | None = None
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._row: list[str] | None = None
        self._figure: dict | None = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags[tag] = self.tags.get(tag, 0) + 1
        for key in ("src", "href"):
            if attrs.get(key):
                self.links.append(attrs[key])
        if tag == "article":
            self._article = attrs.get("id")
        elif tag == "details":
            self._details.append(attrs.get("id") or f"details-{len(self.details)}")
            self.details[self._details[-1]] = []
        if tag == "table":
            self._table = attrs.get("id") or f"table-{len(self.tables)}"
            self.tables[self._table] = []
            self.table_classes[self._table] = attrs.get("class") or ""
            for open_details in self._details:
                self.details[open_details].append(self._table)
        elif tag == "tr" and self._table:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "figure":
            self._figure = {
                "kind": attrs.get("data-kind"),
                "svg_elements": 0,
                "caption": "",
                "article": self._article,
                "folded": bool(self._details),
            }
        elif self._figure is not None and tag in ("path", "rect", "line", "text", "use"):
            self._figure["svg_elements"] += 1

    def handle_endtag(self, tag):
        if tag == "article":
            self._article = None
        elif tag == "details" and self._details:
            self._details.pop()
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row and self._table:
                rows = self.tables[self._table]
                if self._table not in self.headers:
                    self.headers[self._table] = self._row
                else:
                    rows.append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        elif tag == "figure" and self._figure is not None:
            self.figures.append(self._figure)
            self._figure = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._figure is not None and self.lasttag == "figcaption":
            self._figure["caption"] += data

    def rows(self, table_id: str) -> list[dict[str, str]]:
        return [
            dict(zip(self.headers[table_id], row, strict=True)) for row in self.tables[table_id]
        ]


# ------------------------------------------------------------------------------------------
# Cost: sums per rule and per arm, by hand
# ------------------------------------------------------------------------------------------
BENCH_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _bench(root: Path, rule: str, key: str, s: float, rss: float, cpu, io_in=0.0):
    path = root / rule / f"{key}.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(BENCH_HEADER + f"{s}\t0:00:01\t{rss}\t1\t1\t1\t{io_in}\t0\t0\t{cpu}\n")


@pytest.fixture
def benchmarks(tmp_path):
    root = tmp_path / "benchmarks"
    _bench(root, "prepare_corpus", "scifact", 2.0, 100.0, 1.5)
    _bench(root, "train_student", "ce-bce", 100.0, 900.0, 180.0)
    _bench(root, "train_student", "ce-kd", 120.0, 950.0, 200.0)
    _bench(root, "train_student", "ce-kd2", 7.0, 10.0, 7.0)  # another student, not an arm
    _bench(root, "rerank_cross_encoder", "dl19/given/ce-bce", 10.0, 500.0, 12.0)
    _bench(root, "rerank_cross_encoder", "dl19/given/ce-kd", 11.0, 520.0, "NA")
    _bench(root, "rerank_cross_encoder", "dl19/given/ce-kd.untrained", 9.0, 480.0, 10.0)
    _bench(root, "evaluate_run", "dl19/rerank/given/ce-kd", 1.0, 80.0, 0.5, io_in=3.0)
    return root


def test_cost_sums_per_rule_and_per_arm(benchmarks, tmp_path):
    studies = {"objectives": {"arms": ["ce-bce", "ce-kd"], "baseline": "ce-bce"}}
    table = cost.write_cost_table(benchmarks, tmp_path / "c.tsv", tmp_path / "c.md", studies)
    by = {(r.scope, r.study, r.arm, r.rule): r for r in table.itertuples()}
    rerank = by[("rule", "", "", "rerank_cross_encoder")]
    assert (rerank.jobs, rerank.wall_s, rerank.cpu_s, rerank.max_rss_mb) == (3, 30.0, 22.0, 520.0)
    kd = by[("arm", "objectives", "ce-kd", "")]
    # train 120 + rerank 11 + untrained rerank 9 + evaluate 1; ce-kd2 is another student.
    assert (kd.jobs, kd.wall_s, kd.cpu_s, kd.max_rss_mb, kd.io_in_mb) == (
        4,
        141.0,
        210.5,
        950.0,
        3.0,
    )
    bce = by[("arm", "objectives", "ce-bce", "")]
    assert (bce.jobs, bce.wall_s, bce.cpu_s) == (2, 110.0, 192.0)
    assert by[("arm-rule", "objectives", "ce-kd", "train_student")].wall_s == 120.0
    total = by[("total", "", "", "")]
    assert (total.jobs, total.wall_s) == (8, 260.0)
    markdown = (tmp_path / "c.md").read_text()
    assert "| objectives | ce-kd  | 4      | 141.0    | 210.5   | 950.0        |" in markdown
    back = pd.read_csv(tmp_path / "c.tsv", sep="\t")
    assert list(back.columns) == cost.COLUMNS and len(back) == len(table)


def test_cost_counts_only_the_manifest_jobs(benchmarks, tmp_path):
    manifest = tmp_path / "manifest.json"
    manifest.write_text(
        json.dumps(
            {
                "jobs": [
                    {"record": "results/provenance/prepare_corpus/scifact.json"},
                    {"record": "results/provenance/rerank_cross_encoder/dl19/given/ce-kd.json"},
                ]
            }
        )
    )
    only = cost.jobs_in_manifest(manifest)
    assert only == {("prepare_corpus", "scifact"), ("rerank_cross_encoder", "dl19/given/ce-kd")}
    table = cost.write_cost_table(benchmarks, tmp_path / "c.tsv", tmp_path / "c.md", only=only)
    total = table[table.scope == "total"].iloc[0]
    assert (total.jobs, total.wall_s) == (2, 13.0)


def test_arm_membership_is_by_path_segment():
    assert cost.in_arm("dl19/given/ce-kd", "ce-kd")
    assert cost.in_arm("dl19/given/ce-kd.dim64", "ce-kd")
    assert cost.in_arm("ce-kd", "ce-kd")
    assert not cost.in_arm("dl19/given/ce-kd2", "ce-kd")
    assert not cost.in_arm("dl19/given/ce-kd.other", "ce-kd")
    assert not cost.in_arm("dl19/ce/kd", "ce-kd")


# ------------------------------------------------------------------------------------------
# The generator on files alone: optional sections, studies, deltas, curves
# ------------------------------------------------------------------------------------------
MEAN_HEADER = "dataset\trun\trel_level\tnDCG@10\tRR@10\tqueries\n"


def _metric(results: Path, dataset: str, run: str, values: dict[str, list[float]]):
    folder = results / "metrics" / dataset / run
    folder.mkdir(parents=True)
    queries = [f"q{i}" for i in range(len(values["nDCG@10"]))]
    frame = pd.DataFrame({"query_id": queries, **values})
    frame.to_csv(folder / "per-query.tsv", sep="\t", index=False, float_format="%.6f")
    means = "\t".join(f"{np.mean(v):.4f}" for v in values.values())
    (folder / "mean.tsv").write_text(
        MEAN_HEADER + f"{dataset}\t{run}\t1\t{means}\t{len(queries)}\n"
    )
    return folder / "mean.tsv"


def test_report_with_only_a_baseline_table(tmp_path):
    results = tmp_path / "results"
    mean = _metric(results, "d", "first-stage/bm25", {"nDCG@10": [0.5, 1.0], "RR@10": [1, 1]})
    (results / "tables").mkdir()
    shutil.copy(mean, results / "tables" / "baselines.tsv")
    html = render(
        ReportInputs(
            results_dir=str(results),
            baselines=str(results / "tables/baselines.tsv"),
            metric_files=[str(mean)],
            config={"seed": 1},
        ),
        TEMPLATE,
    )
    dom = Dom(html)
    (row,) = dom.rows("metrics-table")
    assert row["nDCG@10"] == "0.7500" and row["run"] == "first-stage/bm25"
    assert row["reproduce with"] == (
        f"snakemake --profile profiles/local {results}/metrics/d/first-stage/bm25/mean.tsv"
    )
    for note in (
        "No reproduction table",
        "No studies configured.",
        "No training curves",
        "No training-data table",
        "No cost table.",
        "No provenance manifest.",
    ):
        assert note in html
    assert dom.figures == []


def test_training_data_is_one_table_per_stage_with_its_own_columns():
    frame = pd.DataFrame(
        [
            {"stage": "queries", "artifact": "q", "selected_queries": 3, "miner": None},
            {"stage": "negatives", "artifact": "n1", "miner": "bm25", "negatives": 7},
            {"stage": "negatives", "artifact": "n2", "miner": "dense", "negatives": 5},
        ]
    )
    parts = training_data_tables(frame)
    assert [p["stage"] for p in parts] == ["queries", "negatives"]
    assert parts[0]["table"]["columns"] == ["artifact", "selected_queries"]
    assert parts[1]["table"]["columns"] == ["artifact", "miner", "negatives"]
    assert [[c["text"] for c in row] for row in parts[1]["table"]["rows"]] == [
        ["n1", "bm25", "7"],
        ["n2", "dense", "5"],
    ]


def test_report_renders_studies_deltas_and_curves(tmp_path):
    results = tmp_path / "results"
    base = [0.2, 0.4, 0.6, 0.8, 0.5]
    better = [0.3, 0.4, 0.9, 0.7, 0.5]
    m1 = _metric(results, "dl19", "rerank/given/ce-bce", {"nDCG@10": base, "RR@10": base})
    m2 = _metric(results, "dl19", "rerank/given/ce-kd", {"nDCG@10": better, "RR@10": better})
    studies = results / "tables" / "studies"
    studies.mkdir(parents=True)
    pd.DataFrame(
        [
            {"study": "obj", "dataset": "dl19", "arm": "ce-bce", "variant": "trained",
             "run": "rerank/given/ce-bce", "reference": "", "queries": 5, "nDCG@10": 0.5,
             "nDCG@10 delta": None, "nDCG@10 p": None, "nDCG@10 sig": ""},
            {"study": "obj", "dataset": "dl19", "arm": "ce-kd", "variant": "trained",
             "run": "rerank/given/ce-kd", "reference": "rerank/given/ce-bce", "queries": 5,
             "nDCG@10": 0.56, "nDCG@10 delta": 0.06, "nDCG@10 p": 0.00012, "nDCG@10 sig": "▲"},
        ]
    ).to_csv(studies / "obj.tsv", sep="\t", index=False)  # fmt: skip
    deltas = pd.DataFrame(
        {
            "study": "obj",
            "dataset": "dl19",
            "arm": "ce-kd",
            "variant": "trained",
            "run": "rerank/given/ce-kd",
            "reference": "rerank/given/ce-bce",
            "query_id": [f"q{i}" for i in range(5)],
            "measure": "nDCG@10",
            "value": better,
            "reference_value": base,
            "delta": np.subtract(better, base),
        }
    )
    deltas.to_csv(studies / "obj.per-query.tsv", sep="\t", index=False)
    curves = results / "students" / "ce-kd" / "curves.jsonl"
    curves.parent.mkdir(parents=True)
    curves.write_text(
        "".join(
            json.dumps({"step": s, "loss": 1 / (s + 1), "lr": 1e-4 * s / 10}) + "\n"
            for s in range(0, 50, 5)
        )
    )
    html = render(
        ReportInputs(
            results_dir=str(results),
            studies={"obj": str(studies / "obj.tsv")},
            study_deltas={"obj": str(studies / "obj.per-query.tsv")},
            study_specs={"obj": {"arms": ["ce-bce", "ce-kd"], "baseline": "ce-bce"}},
            metric_files=[str(m1), str(m2)],
            curves={"ce-kd": str(curves), "absent": str(results / "nope.jsonl")},
            config={"studies": {"obj": {"arms": ["ce-bce", "ce-kd"]}}},
        ),
        TEMPLATE,
    )
    dom = Dom(html)
    rows = dom.rows("study-table-obj")
    assert [r["arm"] for r in rows] == ["ce-bce", "ce-kd"]
    assert rows[1]["nDCG@10 sig"] == "▲" and rows[1]["nDCG@10 p"] == "1.20e-04"
    assert rows[1]["reproduce with"].endswith(f"{results}/metrics/dl19/rerank/given/ce-kd/mean.tsv")
    assert "study-table-obj" in dom.details["study-details-obj"]
    (compact_row,) = [r for r in dom.rows("study-compact-obj") if r["arm"] == "ce-kd"]
    assert compact_row["nDCG@10"] == "0.5600▲Δ +0.0600"
    assert compact_row["queries +/−/= (nDCG@10)"] == "2 / 1 / 2"
    kinds = [f["kind"] for f in dom.figures]
    assert kinds.count("study-delta") == 1 and kinds.count("study-curve") == 1
    assert kinds.count("study-intervals") == 1 and kinds.count("curve") == 0
    (delta,) = [f for f in dom.figures if f["kind"] == "study-delta"]
    assert delta["svg_elements"] > 10
    # 2 better, 1 worse, 2 equal; mean delta (0.1+0+0.3-0.1+0)/5 = +0.06
    assert "2 better, 1 worse, 2 equal vs ce-bce (mean Δ +0.0600)" in html


# ------------------------------------------------------------------------------------------
# Studies as a results section: compact table, intervals, overlaid curves, folded details
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def study_inputs(tmp_path_factory):
    return study_report_inputs(tmp_path_factory.mktemp("studies"))


def _by_hand_counts(inputs: ReportInputs, study: str, run: str, measure: str) -> str:
    deltas = pd.read_csv(inputs.study_deltas[study], sep="\t")
    chosen = deltas[(deltas["run"] == run) & (deltas["measure"] == measure)]["delta"]
    return f"{(chosen > 1e-9).sum()} / {(chosen < -1e-9).sum()} / {(chosen.abs() <= 1e-9).sum()}"


def test_every_study_has_a_compact_table_an_interval_figure_and_folded_details(study_inputs):
    html = render(study_inputs, TEMPLATE)
    dom = Dom(html)
    assert "<script" not in html
    for study, spec in FIXTURE_STUDIES.items():
        compact_id = f"study-compact-{study}"
        assert dom.headers[compact_id] == [
            "arm",
            *spec["measures"],
            f"queries +/−/= ({spec['measures'][0]})",
        ]
        assert "compact" in dom.table_classes[compact_id]
        # The full table (p-values, commands) and the per-query plots are folded away.
        assert f"study-table-{study}" in dom.details[f"study-details-{study}"]
        assert compact_id not in dom.details[f"study-details-{study}"]
        mine = [f for f in dom.figures if f["article"] == f"study-{study}"]
        (intervals,) = [f for f in mine if f["kind"] == "study-intervals"]
        assert not intervals["folded"] and intervals["svg_elements"] > 20
        assert "95 % bootstrap intervals (1000 resamples" in intervals["caption"]
        deltas = [f for f in mine if f["kind"] == "study-delta"]
        assert deltas and all(f["folded"] for f in deltas)
        assert all(not f["folded"] for f in mine if f["kind"] == "study-curve")
    rows = {r["arm"]: r for r in dom.rows("study-compact-rerankers")}
    assert list(rows) == [
        "cl-guide baseline",
        "kd-guide",
        "kd_lion_2e6",
        "cl-guide (untrained) vs trained",
        "kd-guide (untrained) vs trained",
        "kd_lion_2e6 (untrained) vs trained",
    ]
    table = pd.read_csv(study_inputs.studies["rerankers"], sep="\t").set_index("run")
    kd = table.loc["rerank/given/kd-guide"]
    assert kd["nDCG@10 p_holm"] < 0.05 and kd["nDCG@10 delta"] > 0
    assert rows["kd-guide"]["nDCG@10"] == f"{kd['nDCG@10']:.4f}▲Δ {kd['nDCG@10 delta']:+.4f}"
    assert rows["cl-guide baseline"]["queries +/−/= (nDCG@10)"] == "reference"
    assert rows["kd_lion_2e6"]["queries +/−/= (nDCG@10)"] == _by_hand_counts(
        study_inputs, "rerankers", "rerank/given/kd_lion_2e6", "nDCG@10"
    )
    # Bold: the best trained arm (kd-guide) in every measure, and only there among trained rows.
    section = html[html.index('id="study-compact-rerankers"') :]
    section = section[: section.index("</table>")]
    trained = section[: section.index("cl-guide (untrained)")]
    assert trained.count("<strong>") == 3
    assert trained.index("<strong>") > trained.index("kd-guide")
    # Two datasets: a group row each; the dim variant after the trained arms.
    embedder = [r[0] for r in dom.tables["study-compact-embedder"]]
    assert embedder[0] == "scifact-test" and "nfcorpus-test" in embedder
    assert embedder[1:5] == [
        "emb-guide baseline",
        "emb-first",
        "emb-guide (dim64) baseline",
        "emb-first (dim64)",
    ]
    # Curves overlaid per objective (students) and per loss column (decoders).
    curves = {
        study: [f["caption"] for f in dom.figures if f["article"] == f"study-{study}"
                and f["kind"] == "study-curve"]
        for study in FIXTURE_STUDIES
    }  # fmt: skip
    assert curves["rerankers"] == [
        "objective cl: loss of cl-guide per optimizer step",
        "objective kd: loss of kd-guide, kd_lion_2e6 per optimizer step",
    ]
    assert curves["embedder"] == [
        "objective margin_mse: loss of emb-guide, emb-first per optimizer step"
    ]
    assert curves["unified"] == [
        "loss of joint-lora, embed-only, rerank-only per optimizer step",
        "loss_embed of joint-lora, embed-only per optimizer step",
        "loss_rerank of joint-lora, rerank-only per optimizer step",
    ]
    assert not [f for f in dom.figures if f["kind"] == "curve"]
    # A config without expectations: one sentence, no empty table, no 0/0/0 badges.
    assert "This configuration sets no expectations" in html
    assert "reproduction-table" not in dom.tables and "0 reproduced" not in html
    assert SMOKE_NOTICE not in html


@pytest.mark.parametrize("scale", ["smoke", "small", None])
def test_smoke_scale_is_said_at_the_top_and_above_every_study_table(study_inputs, scale):
    html = render(study_inputs, TEMPLATE, scale=scale)
    if scale != "smoke":
        assert SMOKE_NOTICE not in html and "Smoke scale" not in html
        assert (f"Scale: <strong>{scale}</strong>" in html) == (scale is not None)
        return
    assert html.count(SMOKE_NOTICE) == 1 + len(FIXTURE_STUDIES)
    assert html.index(SMOKE_NOTICE) < html.index('id="how-to-rerun"')
    for study in FIXTURE_STUDIES:
        article = html[html.index(f'id="study-{study}"') :]
        assert article.index(SMOKE_NOTICE) < article.index(f'id="study-compact-{study}"')


def test_bootstrap_interval_is_seeded_and_brackets_the_mean():
    values = np.random.default_rng(3).uniform(0, 1, 50)
    mean, low, high = bootstrap_interval(values)
    assert (mean, low, high) == bootstrap_interval(values)
    assert low < mean < high and mean == pytest.approx(values.mean())
    assert bootstrap_interval(values, seed=1) != (mean, low, high)
    _, low4, high4 = bootstrap_interval(np.tile(values, 4))
    assert high4 - low4 < high - low  # more queries, a narrower interval
    assert bootstrap_interval(np.full(10, 0.5)) == (0.5, 0.5, 0.5)


def test_long_commands_wrap_and_tables_collapse_to_cards_on_a_phone(study_inputs):
    html = render(study_inputs, TEMPLATE)
    assert "white-space: nowrap; }\n" not in html.split("td.command code")[1][:80]
    assert '<pre class="cmd"><code>snakemake --profile' in html
    assert "@media (max-width: 640px)" in html and "content: attr(data-label)" in html
    dom = Dom(html)
    assert all("cards" in css for css in dom.table_classes.values())


# ------------------------------------------------------------------------------------------
# Study tables as LaTeX: booktabs, escaped names, marks; compiled with pdflatex
# ------------------------------------------------------------------------------------------
def _pdflatex() -> str | None:
    found = shutil.which("pdflatex")
    if found is None and os.environ.get("IRFLOW_REQUIRE_LATEX") == "1":
        pytest.fail(
            "IRFLOW_REQUIRE_LATEX=1 but no pdflatex on PATH "
            "(apt-get install texlive-latex-base texlive-latex-recommended)"
        )
    return found


def test_escape_spells_out_latex_specials():
    assert escape("kd_lion 5% & #1 {x} ~y^2 $z\\") == (
        r"kd\_lion 5\% \& \#1 \{x\} \textasciitilde{}y\textasciicircum{}2 \$z\textbackslash{}"
    )


def test_study_latex_tables_compile(study_inputs, tmp_path):
    texts = {}
    for study, spec in FIXTURE_STUDIES.items():
        out = tmp_path / f"{study}.tex"
        scale = "smoke" if study == "unified" else None
        texts[study] = write_study_latex(study, spec, study_inputs.studies[study], out, scale=scale)
        assert out.read_text() == texts[study]
    rerankers = texts["rerankers"]
    for piece in (r"\toprule", r"\midrule", r"\bottomrule", "Arm & nDCG@10 & RR@10 & AP \\\\",
                  r"kd\_lion\_2e6 (untrained)", r"\textbf{", r"$^{\dagger}$", r"$^{\ddagger}$",
                  "two-sided paired t-test", "Holm's correction", "$p < 0.05$",
                  r"\label{tab:study-rerankers}"):  # fmt: skip
        assert piece in rerankers, piece
    assert "kd_lion" not in rerankers.replace(r"kd\_lion", "")
    table = pd.read_csv(study_inputs.studies["rerankers"], sep="\t").set_index("run")
    kd = table.loc["rerank/given/kd-guide"]
    assert f"kd-guide & \\textbf{{{kd['nDCG@10']:.4f}}}$^{{\\dagger}}$ & " in rerankers
    assert "randomization test" in texts["embedder"]
    assert r"\multicolumn{3}{l}{\textit{scifact-test}}" in texts["embedder"]
    assert texts["unified"].count("Smoke scale") == 1
    pdflatex = _pdflatex()
    if pdflatex is None:
        pytest.skip("pdflatex not installed (set IRFLOW_REQUIRE_LATEX=1 to require it)")
    (tmp_path / "paper.tex").write_text(
        "\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
        + "".join(f"\\input{{{study}.tex}}\n" for study in FIXTURE_STUDIES)
        + "Tables~\\ref{tab:study-rerankers}.\n\\end{document}\n"
    )
    done = subprocess.run(
        [pdflatex, "-interaction=nonstopmode", "-halt-on-error", "paper.tex"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert (tmp_path / "paper.pdf").stat().st_size > 1000
    log = (tmp_path / "paper.log").read_text(errors="replace")
    assert "Overfull \\hbox" not in log and "Undefined control sequence" not in log


# ------------------------------------------------------------------------------------------
# The report a real run built, in headless Chromium
# ------------------------------------------------------------------------------------------
def _chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.environ.get("IRFLOW_REQUIRE_CHROMIUM") == "1":
        pytest.fail("IRFLOW_REQUIRE_CHROMIUM=1 but no chromium on PATH (apt-get install chromium)")
    return found


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # root in CI containers
    "--disable-gpu",
    "--hide-scrollbars",
    "--no-first-run",
    # No network at all: a page that needed a CDN would show it.
    "--host-resolver-rules=MAP * ~NOTFOUND",
]


def _shoot(chromium: str, page: Path, shot: Path, width: int, height: int) -> np.ndarray:
    done = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--window-size={width},{height}", f"--screenshot={shot}",
         page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    import matplotlib.image

    return matplotlib.image.imread(str(shot))[..., :3]


def _heading_rules(pixels: np.ndarray) -> list[int]:
    """Rows where a section heading's 2 px rule (the --line colour across the page) starts."""
    line = np.array([0xD9, 0xDE, 0xE2]) / 255
    ruled = (np.abs(pixels - line).max(axis=2) < 0.02).mean(axis=1) > 0.7
    return [int(y) for y in np.flatnonzero(ruled[:-1] & ruled[1:] & ~np.r_[False, ruled[:-2]])]


def _above_heading(ink: np.ndarray, rule: int, gap: int = 24) -> int:
    """The row just below the content above a heading whose rule starts at ``rule``: up past
    the heading's lines (white runs shorter than ``gap``) to the margin above it."""
    inked = ink.any(axis=1)
    y, white = rule - 1, 0
    while y > 0:
        white = white + 1 if not inked[y] else 0
        if white >= gap:
            return y + 12
        y -= 1
    return rule


def test_study_section_in_headless_chromium_at_desktop_and_phone_width(study_inputs, tmp_path):
    """The studies of the fixture, smoke scale, at 1280 and 390 px: nothing runs past the right
    edge (the page has 14-28 px of white margin there, so an overflowing table or command would
    paint into it), and the page ends within the window. With IRFLOW_SCREENSHOT_DIR the
    screenshots (trimmed to the page) are kept as report-studies-<width>.png."""
    chromium = _chromium()
    if chromium is None:
        pytest.skip("chromium not installed (set IRFLOW_REQUIRE_CHROMIUM=1 to require it)")
    from dataclasses import replace

    from PIL import Image

    page = tmp_path / "index.html"
    write_report(replace(study_inputs, metric_files=[]), page, TEMPLATE, scale="smoke")
    dumped = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = Dom(dumped.stdout)
    for study in FIXTURE_STUDIES:
        assert len(dom.tables[f"study-compact-{study}"]) >= len(FIXTURE_STUDIES[study]["arms"])
        assert f"study-table-{study}" in dom.details[f"study-details-{study}"]
    for width, height in ((1280, 8000), (390, 20000)):
        pixels = _shoot(chromium, page, tmp_path / f"shot-{width}.png", width, height)
        assert pixels.shape[:2] == (height, width)
        ink = (pixels < 0.9).any(axis=2)
        rows = np.flatnonzero(ink.any(axis=1))
        end = int(rows[-1]) + 24
        assert end < height - 24, f"the page is longer than {height} px at {width} px"
        below_nav = ink[260:end]  # the nav wraps to three lines on a phone
        assert not below_nav[:, -6:].any(), f"something runs past the right edge at {width} px"
        assert 0.02 < ink[:end].mean() < 0.6
        if os.environ.get("IRFLOW_SCREENSHOT_DIR"):
            target = Path(os.environ["IRFLOW_SCREENSHOT_DIR"]) / f"report-studies-{width}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            # Down to the section after the studies (its heading's rule, less the heading).
            section_rules = _heading_rules(pixels)
            studies_end = _above_heading(ink, section_rules[3]) if len(section_rules) > 3 else end
            Image.open(tmp_path / f"shot-{width}.png").crop((0, 0, width, studies_end)).save(target)
            print(f"report screenshot: {target}")


@pytest.fixture(scope="module")
def built_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    model = tiny_bi_encoder(root / "model")
    config = tiny_config(tiny_beir(root / "data"), model)
    workdir = root / "work"
    workdir.mkdir()
    snakemake(workdir, config)
    return workdir, config


@pytest.mark.slow
def test_report_in_headless_chromium(built_report):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("chromium not installed (set IRFLOW_REQUIRE_CHROMIUM=1 to require it)")
    workdir, _ = built_report
    page = workdir / "results" / "report" / "index.html"
    html = page.read_text()
    # Self-contained: no script, no stylesheet link, nothing fetched.
    assert "<script" not in html and "<link" not in html
    assert not [u for u in Dom(html).links if not u.startswith("#")]

    dumped = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = Dom(dumped.stdout)
    (repro,) = dom.rows("reproduction-table")
    assert (repro["run"], repro["status"], repro["measured"]) == (
        "first-stage/bm25",
        "reproduced",
        "1.0000",
    )
    metrics = {r["run"]: r for r in dom.rows("metrics-table")}
    assert set(metrics) == {"first-stage/bm25", "rerank/bm25/tiny-st"}
    assert metrics["first-stage/bm25"]["nDCG@10"] == "1.0000"
    assert all(r["reproduce with"].startswith("snakemake --profile") for r in metrics.values())
    cost_rules = {r["rule"] for r in dom.rows("cost-table")}
    assert {"bm25_index", "rerank_bi_encoder", "evaluate_run", "(all jobs)"} <= cost_rules
    packages = {r["package"]: r["version"] for r in dom.rows("packages-table")}
    assert packages["snakemake"] and packages["torch"]
    artifacts = {r["artifact"]: r for r in dom.rows("artifacts-table")}
    assert artifacts["results/runs/tiny/first-stage/bm25.trec"]["verified"] == "yes"
    sources = {r["source file"]: r for r in dom.rows("sources-table")}
    assert any(path.endswith("qrels/test.tsv") for path in sources), sorted(sources)
    assert all(len(r["sha256"]) == 16 for r in sources.values())
    (plot,) = [f for f in dom.figures if f["kind"] == "baseline-delta"]
    assert plot["svg_elements"] > 10 and "rerank/bm25/tiny-st" in plot["caption"]

    shot = workdir / "results" / "report" / "screenshot.png"
    done = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, "--window-size=1400,2200", f"--screenshot={shot}",
         page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    import matplotlib.image

    pixels = matplotlib.image.imread(str(shot))[..., :3]
    assert pixels.shape[:2] == (2200, 1400)
    not_white = (pixels < 0.95).any(axis=2).mean()
    assert 0.03 < not_white < 0.9, not_white  # text, tables and plots, on a white page
    assert pixels.std() > 0.05
    if os.environ.get("IRFLOW_SCREENSHOT_DIR"):
        target = Path(os.environ["IRFLOW_SCREENSHOT_DIR"]) / "report-screenshot.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, target)
        shot = target
    print(f"report screenshot: {shot}")


@pytest.mark.slow
def test_reproduce_command_of_a_row_gives_the_same_number(built_report, tmp_path):
    workdir, _ = built_report
    dom = Dom((workdir / "results/report/index.html").read_text())
    row = {r["run"]: r for r in dom.rows("metrics-table")}["rerank/bm25/tiny-st"]
    command = shlex.split(row["reproduce with"])
    assert command[:3] == ["snakemake", "--profile", "profiles/local"]
    assert command[-1] == "results/metrics/tiny/rerank/bm25/tiny-st/mean.tsv"
    # A fresh working directory (as a fresh clone has no results/) beside the checkout's
    # profiles; the checkout's Snakefile is named because the directory is not the checkout.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "profiles").symlink_to(REPO / "profiles")
    done = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), *command[1:]],
        cwd=fresh,
        env=offline_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rebuilt = pd.read_csv(fresh / command[-1], sep="\t")
    assert f"{rebuilt.loc[0, 'nDCG@10']:.4f}" == row["nDCG@10"]
    assert (fresh / command[-1]).read_bytes() == (workdir / command[-1]).read_bytes()
