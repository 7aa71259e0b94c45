"""The project's own HTML report: one self-contained page built only from the workflow's files.

Everything is inline (CSS in a <style> element, plots as SVG elements, no script at all), so
the page opens offline, from a mail attachment or a cluster's file browser, exactly as written.
Every section is optional: a missing table (no studies yet, no training data, no expectations)
leaves a short note instead of failing the report.

Inputs (all paths; see :class:`ReportInputs`): the baselines and training-data tables, study
tables with their long per-query delta tables, per-run mean metric files, students' training
curves (JSON lines with ``step`` and loss/lr columns), the reproduction and cost tables, the
provenance manifest, and the configuration as run. The HTML comes from a Jinja2 template
(``reports/templates/report.html.j2``); Jinja2's autoescaping escapes every value taken from a
file.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from irflow.checks import read_reproduction_table
from irflow.io import InputError, write_text_atomic
from irflow.provenance import now_iso, redact
from irflow.report import compact, plots

DEFAULT_TEMPLATE = Path(__file__).resolve().parents[3] / "reports" / "templates" / "report.html.j2"


HIDDEN_METRIC_COLUMNS = ("queries_missing_from_run", "unjudged_run_queries_dropped")


@dataclass
class ReportInputs:
    results_dir: str = "results"
    baselines: str | None = None
    training_data: str | None = None
    studies: dict[str, str] = field(default_factory=dict)  # study -> table TSV
    study_deltas: dict[str, str] = field(default_factory=dict)  # study -> per-query delta TSV
    study_specs: dict[str, dict] = field(default_factory=dict)
    metric_files: list[str] = field(default_factory=list)  # mean.tsv of every metric row
    curves: dict[str, str] = field(default_factory=dict)  # student -> curves.jsonl
    # decoder arm -> {"grad_cosine" | "expert_usage": SVG file} (irflow.decoder.diagnostics)
    decoder_plots: dict[str, dict[str, str]] = field(default_factory=dict)
    # decoder arm -> train_log.tsv; where absent, results_dir/decoders/<arm>/diagnostics/
    train_logs: dict[str, str] = field(default_factory=dict)
    reproduction: str | None = None
    compare: str | None = None  # rerun vs reference (irflow.compare), when configured
    compare_effects: str | None = None
    cost: str | None = None
    manifest: str | None = None
    config: dict = field(default_factory=dict)  # as the user wrote it
    plan: dict = field(default_factory=dict)  # irflow.plan.Plan.describe() of that config
    configfiles: list[str] = field(default_factory=list)
    profile: str = "profiles/local"
    title: str = "irflow report"


def _exists(path: str | None) -> bool:
    return bool(path) and Path(path).is_file()


def _read_tsv(path: str) -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep="\t", dtype={"run": str, "dataset": str, "query_id": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise InputError(f"{path}: cannot read the table ({err})") from None


def fmt(value, digits: int = 4) -> str:
    """A table cell: floats to ``digits`` decimals (tiny values, e.g. p-values, in scientific
    notation)."""
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if digits >= 3 and value != 0 and abs(value) < 1e-3:
            return f"{value:.2e}"
        return f"{value:.{digits}f}"
    return str(value)


def _integral(series: pd.Series) -> bool:
    """A float column of counts (read as float because of gaps): whole numbers only, and some
    above 1, so that a measure in [0, 1] that happens to be 0 or 1 everywhere keeps its
    decimals."""
    values = pd.to_numeric(series, errors="coerce").dropna()
    return (
        series.dtype.kind == "f"
        and len(values) > 0
        and bool((values % 1 == 0).all())
        and bool((values.abs() > 1).any())
    )


def table(frame: pd.DataFrame, classes: Mapping[str, str] | None = None, digits: int = 4) -> dict:
    """A frame as {columns, rows} of display strings; ``classes`` maps a column to CSS classes
    taken from its values (e.g. status -> 'status-missed')."""
    rows = []
    integral = {c for c in frame.columns if _integral(frame[c])}
    for _, record in frame.iterrows():
        cells = []
        for column in frame.columns:
            value = record[column]
            if hasattr(value, "item"):  # numpy scalars -> Python numbers
                value = value.item()
            if column in integral and isinstance(value, float) and not math.isnan(value):
                value = int(value)
            elif column == "tolerance" and isinstance(value, float):
                value = f"±{value:g}"
            css = ""
            if classes and column in classes and isinstance(value, str) and value:
                css = f"{classes[column]}-{value}"
            if isinstance(value, int | float) and not isinstance(value, bool):
                css = (css + " num").strip()
            cells.append({"text": fmt(value, digits), "class": css})
        rows.append(cells)
    return {"columns": [str(c) for c in frame.columns], "rows": rows}


def command_for(inputs: ReportInputs, target: str) -> str:
    parts = ["snakemake", "--profile", inputs.profile]
    # --configfile takes several values: the '=' form keeps it from swallowing the target.
    parts += [f"--configfile={configfile}" for configfile in inputs.configfiles]
    parts.append(target)
    return shlex.join(parts)


def metric_target(results_dir: str, dataset: str, run: str) -> str:
    return f"{results_dir}/metrics/{dataset}/{run}/mean.tsv"


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------
def metric_rows(inputs: ReportInputs) -> dict | None:
    """Every metric row (one per mean.tsv) with the command that recomputes it."""
    frames = []
    for path in inputs.metric_files:
        if _exists(path):
            frames.append(_read_tsv(path))
    if not frames:
        return None
    frame = pd.concat(frames, ignore_index=True)
    frame = frame.drop_duplicates(subset=["dataset", "run"]).reset_index(drop=True)
    # Coverage columns stay in the TSVs; the page keeps the measures and the command in view.
    frame = frame.drop(columns=[c for c in HIDDEN_METRIC_COLUMNS if c in frame.columns])
    shown = table(frame)
    shown["columns"].append("reproduce with")
    for cells, (_, record) in zip(shown["rows"], frame.iterrows(), strict=True):
        target = metric_target(inputs.results_dir, record["dataset"], record["run"])
        cells.append({"text": command_for(inputs, target), "class": "command"})
    return shown


BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
SMOKE_NOTICE = "Smoke scale: these numbers show that the pipeline runs, not findings."


def bootstrap_interval(
    values: np.ndarray,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """(mean, low, high): the mean over queries and its percentile bootstrap interval
    (``resamples`` resamples of the queries with replacement, from a seeded generator)."""
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // max(len(values), 1))  # bounded memory on large query sets
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        index = rng.integers(0, len(values), size=(stop - start, len(values)))
        means[start:stop] = values[index].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(values.mean()), float(low), float(high)


def _per_query_values(inputs: ReportInputs, deltas: pd.DataFrame | None, dataset, run, measure):
    """A study row's per-query values: its metric file, else the per-query delta table."""
    path = Path(inputs.results_dir) / "metrics" / dataset / run / "per-query.tsv"
    if path.is_file():
        frame = _read_tsv(str(path))
        if measure in frame.columns:
            return pd.to_numeric(frame[measure], errors="coerce").dropna().to_numpy()
    if deltas is not None and len(deltas):
        chosen = deltas[(deltas["measure"] == measure) & (deltas["dataset"] == dataset)]
        mine = chosen[chosen["run"] == run]
        if len(mine):
            return mine["value"].to_numpy(dtype=float)
        theirs = chosen[chosen["reference"] == run].drop_duplicates("query_id")
        if len(theirs):
            return theirs["reference_value"].to_numpy(dtype=float)
    return None


def _signed(value: float | None) -> str:
    return "" if value is None else f"{value:+.4f}"


def spec_baseline(spec: dict) -> str:
    return spec.get("baseline") or (spec.get("arms") or [""])[0]


def compact_table(measures: list[str], rows: list[compact.Row], study: str, spec: dict) -> dict:
    """The paper-style table's cells (see :mod:`irflow.report.compact`) for the template."""
    primary = measures[0] if measures else ""
    groups: list[dict] = []
    for row in rows:
        if not groups or groups[-1]["dataset"] != row.dataset:
            groups.append({"dataset": row.dataset, "rows": []})
        cells = []
        for measure in measures:
            cell = row.cells[measure]
            title = ""
            if cell.p_holm is not None:
                title = f"Holm-adjusted p = {fmt(cell.p_holm)} vs {row.reference_arm}"
            cells.append(
                {
                    "label": measure,
                    "mean": fmt(cell.mean),
                    "sd": "" if cell.sd is None else fmt(cell.sd),
                    "best": cell.best,
                    "mark": {"better": "▲", "worse": "▼"}.get(cell.sig, ""),
                    "sig": cell.sig,
                    "delta": _signed(cell.delta),
                    "title": title,
                }
            )
        if row.counts is not None:
            counts = "{} / {} / {}".format(*row.counts)
        else:
            counts = "reference" if not row.reference else ""
        groups[-1]["rows"].append(
            {
                "label": row.label,
                "reference": row.reference_arm,
                "is_reference": not row.reference,
                "tag": "baseline"
                if not row.reference and row.arm == spec_baseline(spec)
                else ("vs trained" if row.variant == "untrained" else ""),
                "first_of_variant": row.first_of_variant,
                "cells": cells,
                "counts": counts,
            }
        )
    return {
        "id": f"study-compact-{study}",
        "measures": measures,
        "counts_column": f"queries +/−/= ({primary})",
        "groups": groups,
        "many_datasets": len(groups) > 1,
    }


def study_interval_figure(
    inputs: ReportInputs, measures: list[str], rows: list[compact.Row], deltas, baseline: str
) -> dict | None:
    """Every row of the study with its 95 % bootstrap interval, one panel per measure."""
    labels, groups, is_base, intervals = [], [], [], {m: [] for m in measures}
    datasets = {r.dataset for r in rows}
    for row in rows:
        found = False
        for measure in measures:
            values = _per_query_values(inputs, deltas, row.dataset, row.run, measure)
            entry = bootstrap_interval(values) if values is not None and len(values) else None
            intervals[measure].append(entry)
            found = found or entry is not None
        if not found:
            for measure in measures:
                intervals[measure].pop()
            continue
        label = row.label if len(datasets) == 1 else f"{row.dataset} · {row.label}"
        labels.append(label)
        groups.append(f"{row.dataset}\t{row.variant}")
        is_base.append(row.arm == baseline and not row.reference)
    if not labels:
        return None
    panels = [
        plots.arm_intervals(labels, measure, intervals[measure], is_base, groups)
        for measure in measures
        if any(entry is not None for entry in intervals[measure])
    ]
    return {
        "caption": (
            f"Mean over queries with 95 % bootstrap intervals ({BOOTSTRAP_RESAMPLES} resamples "
            f"of the queries, seed {BOOTSTRAP_SEED}); hollow: the baseline arm {baseline}, "
            "dotted: its mean."
        ),
        "svg": "".join(f'<div class="panel">{panel}</div>' for panel in panels),
    }


def _read_curve(path: str) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise InputError(f"{path}:{number}: not JSON ({err.msg})") from None
    return rows


def _read_train_log(path: str) -> list[dict]:
    """A decoder's train_log.tsv (one row per optimizer step, the step counted per stage) as
    curve rows with a global step (the row's position) and its stage."""
    frame = pd.read_csv(path, sep="\t")
    rows = []
    for position, record in enumerate(frame.to_dict("records"), start=1):
        row = {"step": position, "stage": record.get("stage")}
        for key, value in record.items():
            if "loss" in str(key) and isinstance(value, int | float) and not math.isnan(value):
                row[key] = float(value)
        rows.append(row)
    return rows


def _objective_of(config: dict, arm: str) -> str:
    student = (config.get("students") or {}).get(arm) or {}
    objective = (student.get("training") or {}).get("objective") or {}
    if isinstance(objective, str):
        return objective
    return str(objective.get("name") or "")


def study_curves(inputs: ReportInputs, spec: dict) -> list[dict]:
    """The study's arms overlaid: one plot per objective (students of one objective share a
    loss scale; arms of different objectives do not) and per loss column (a decoder logs the
    total loss and each task's)."""
    arms = list(spec.get("arms") or [])
    logs: dict[str, list[dict]] = {}
    arm_of: dict[str, str] = {}  # curve name (an arm, or one seed replicate of it) -> arm
    for arm in arms:
        replicates = sorted(
            (n for n in inputs.curves if re.fullmatch(re.escape(arm) + r"\.seed\d+", n)),
            key=lambda n: int(n.rsplit("seed", 1)[1]),
        )
        for name in replicates if arm not in inputs.curves else []:
            if _exists(inputs.curves[name]):
                logs[name] = _read_curve(inputs.curves[name])
                arm_of[name] = arm
        if replicates and arm not in inputs.curves:
            continue
        if _exists(inputs.curves.get(arm)):
            logs[arm] = _read_curve(inputs.curves[arm])
        elif _exists(inputs.train_logs.get(arm)):
            logs[arm] = _read_train_log(inputs.train_logs[arm])
        else:
            decoder_log = Path(inputs.results_dir) / "decoders" / arm / "diagnostics"
            if (decoder_log / "train_log.tsv").is_file():
                logs[arm] = _read_train_log(str(decoder_log / "train_log.tsv"))
    by_objective: dict[str, list[str]] = {}
    for name in logs:
        objective = _objective_of(inputs.config, arm_of.get(name, name))
        by_objective.setdefault(objective, []).append(name)
    figures = []
    for objective, members in by_objective.items():
        keys = sorted(
            {k for arm in members for row in logs[arm] for k in row if "loss" in str(k)},
            key=lambda k: (k != "loss", k),
        )
        for key in keys:
            series = {
                arm: [
                    (float(r["step"]), float(r[key]))
                    for r in logs[arm]
                    if isinstance(r.get("step"), int | float)
                    and isinstance(r.get(key), int | float)
                    and not isinstance(r.get(key), bool)
                ]
                for arm in members
            }
            what = f"objective {objective}: {key}" if objective else key
            svg = plots.overlaid_curves(series, what, key, "optimizer step")
            if svg:
                shown = [arm for arm in members if series[arm]]
                figures.append(
                    {"caption": f"{what} of {', '.join(shown)} per optimizer step", "svg": svg}
                )
    return figures


def study_sections(inputs: ReportInputs) -> list[dict]:
    sections = []
    for study, path in sorted(inputs.studies.items()):
        if not _exists(path):
            continue
        frame = _read_tsv(path)
        spec = inputs.study_specs.get(study, {})
        baseline = spec.get("baseline") or (spec.get("arms") or [""])[0]
        deltas_path = inputs.study_deltas.get(study)
        deltas = _read_tsv(deltas_path) if _exists(deltas_path) else None
        measures, rows = compact.compact_rows(frame, spec, deltas)
        shown = table(frame)
        if {"dataset", "run"} <= set(frame.columns):
            shown["columns"].append("reproduce with")
            for cells, (_, record) in zip(shown["rows"], frame.iterrows(), strict=True):
                target = metric_target(inputs.results_dir, record["dataset"], record["run"])
                cells.append({"text": command_for(inputs, target), "class": "command"})
        plots_svg = []
        primary = measures[0] if measures else None
        if deltas is not None and primary is not None and len(deltas):
            chosen = deltas[deltas["measure"] == primary]
            keys = ["dataset", "run", "reference"]
            for (dataset, run, reference), group in chosen.groupby(keys, sort=False):
                plots_svg.append(
                    {
                        "caption": f"{dataset}: {run} − {reference}, {primary} per query",
                        "svg": plots.per_query_delta(
                            list(group["query_id"]),
                            list(group["delta"]),
                            f"{dataset} · {run.split('/')[-1]}",
                            primary,
                            str(reference).split("/")[-1],
                        ),
                    }
                )
        sections.append(
            {
                "name": study,
                "description": spec.get("description", ""),
                "baseline": baseline,
                "arms": spec.get("arms", []),
                "test": compact.describe_test(spec),
                "alpha": spec.get("alpha", 0.05),
                "compact": compact_table(measures, rows, study, spec) if measures else None,
                "intervals": study_interval_figure(inputs, measures, rows, deltas, baseline),
                "curves": study_curves(inputs, spec),
                "table": shown,
                "plots": plots_svg,
            }
        )
    return sections


def baseline_delta_plots(inputs: ReportInputs, measure: str = "nDCG@10") -> list[dict]:
    """Per-query deltas of each baseline reranker against the first stage it reranked."""
    figures = []
    by_key = {}
    for path in inputs.metric_files:
        per_query = Path(path).with_name("per-query.tsv")
        if per_query.is_file():
            rel = Path(path).parent.relative_to(Path(inputs.results_dir) / "metrics")
            dataset, run = rel.parts[0], "/".join(rel.parts[1:])
            by_key[(dataset, run)] = per_query
    for (dataset, run), per_query in sorted(by_key.items()):
        parts = run.split("/")
        if parts[0] != "rerank" or len(parts) != 3:
            continue
        first = (dataset, f"first-stage/{parts[1]}")
        if first not in by_key:
            continue
        mine = _read_tsv(str(per_query)).set_index("query_id")
        theirs = _read_tsv(str(by_key[first])).set_index("query_id")
        if measure not in mine.columns or measure not in theirs.columns:
            continue
        common = sorted(set(mine.index) & set(theirs.index))
        delta = (mine.loc[common, measure] - theirs.loc[common, measure]).tolist()
        figures.append(
            {
                "caption": f"{dataset}: {run} − {first[1]}, {measure} per query",
                "svg": plots.per_query_delta(
                    common, delta, f"{dataset} · {parts[2]}", measure, first[1]
                ),
            }
        )
    return figures


def curve_plots(inputs: ReportInputs) -> list[dict]:
    """Training curves of students that are no arm of a study shown in the report (a study's
    arms are drawn together in its own section)."""
    in_studies = {
        arm
        for study, spec in inputs.study_specs.items()
        if _exists(inputs.studies.get(study))
        for arm in spec.get("arms") or []
    }
    figures = []
    for student, path in sorted(inputs.curves.items()):
        if student in in_studies or not _exists(path):
            continue
        rows = _read_curve(path)
        svg = plots.training_curves(rows, f"student {student} ({len(rows)} logged steps)")
        if svg:
            figures.append({"caption": f"training curve of {student}", "svg": svg})
    return figures


DECODER_PLOT_CAPTIONS = {
    "grad_cosine": "cosine between the embedding and reranking gradients, per layer and step",
    "expert_usage": "MoE-LoRA expert usage per task (share of routed slots)",
}


def decoder_plot_figures(inputs: ReportInputs) -> list[dict]:
    """The unified decoder's heatmaps, as drawn by rule decoder_diagnostics (SVG files)."""
    figures = []
    for arm, files in sorted(inputs.decoder_plots.items()):
        for plot, path in files.items():
            if _exists(path):
                svg = plots.inline_svg(Path(path).read_text(encoding="utf-8"))
                caption = f"decoder {arm}: {DECODER_PLOT_CAPTIONS.get(plot, plot)}"
                figures.append({"caption": caption, "svg": svg})
    return figures


def training_data_tables(frame: pd.DataFrame) -> list[dict]:
    """The training-data table split by stage (queries, negatives, teacher scores, filtered),
    each with only its own columns: one wide table would be mostly empty cells."""
    if "stage" not in frame.columns:
        return [{"stage": "", "table": table(frame)}]
    out = []
    for stage, rows in frame.groupby("stage", sort=False):
        rows = rows.drop(columns="stage").dropna(axis=1, how="all")
        out.append({"stage": str(stage), "table": table(rows)})
    return out


def reproduction_section(inputs: ReportInputs) -> dict | None:
    if not _exists(inputs.reproduction):
        return None
    frame = read_reproduction_table(inputs.reproduction)
    counts = {s: int((frame["status"] == s).sum()) for s in ("reproduced", "missed", "missing")}
    return {
        "table": table(frame, classes={"status": "status"}),
        "counts": counts,
        "empty": len(frame) == 0,
    }


def compare_section(inputs: ReportInputs) -> dict | None:
    """This run's run files against the configured reference set (irflow.compare)."""
    if not _exists(inputs.compare):
        return None
    frame = _read_tsv(inputs.compare).fillna("")
    statuses = ("reproduced", "within tolerance", "differs", "missing")
    counts = {s: int((frame["status"] == s).sum()) for s in statuses}
    shown = [c for c in frame.columns if not c.endswith(" reference") and c != "identical_files"]
    effects = None
    if _exists(inputs.compare_effects):
        effect_frame = _read_tsv(inputs.compare_effects)
        effects = table(effect_frame) if len(effect_frame) else None
    return {
        "table": table(frame[shown], classes={"status": "status"}),
        "counts": counts,
        "effects": effects,
    }


def cost_section(inputs: ReportInputs) -> dict | None:
    if not _exists(inputs.cost):
        return None
    frame = _read_tsv(inputs.cost).fillna("")
    figures = ["jobs", "wall_s", "cpu_s", "max_rss_mb", "io_in_mb", "io_out_mb"]
    rules = frame[frame["scope"].isin(["rule", "total"])].copy()
    rules.loc[rules["scope"] == "total", "rule"] = "(all jobs)"
    arms = frame[frame["scope"] == "arm"]
    return {
        "rules": table(rules[["rule", *figures]], digits=1),
        "arms": table(arms[["study", "arm", *figures]], digits=1) if len(arms) else None,
    }


def provenance_section(inputs: ReportInputs) -> dict | None:
    if not _exists(inputs.manifest):
        return None
    manifest = json.loads(Path(inputs.manifest).read_text(encoding="utf-8"))
    summary = manifest.get("summary", {})
    artifacts = pd.DataFrame(
        [
            {
                "artifact": a["path"],
                "rule": a["rule"],
                "size": a.get("size"),
                "sha256": (a.get("sha256") or "")[:16],
                "verified": "MISSING"
                if a.get("missing")
                else {True: "yes", False: "STALE"}.get(a.get("verified"), ""),
            }
            for a in manifest.get("artifacts", [])
        ],
        columns=["artifact", "rule", "size", "sha256", "verified"],
    )
    sources = pd.DataFrame(
        [
            {
                "source file": src["path"],
                "size": src.get("size"),
                "sha256": (src.get("sha256") or "")[:16],
            }
            for src in manifest.get("sources", [])
        ],
        columns=["source file", "size", "sha256"],
    )
    packages = pd.DataFrame(
        [{"package": k, "version": ", ".join(v)} for k, v in summary.get("packages", {}).items()],
        columns=["package", "version"],
    )
    images = []
    for container in summary.get("containers", []):
        images.append(
            {
                "declared": container.get("declared") or "",
                "runtime": json.dumps(container.get("runtime"), sort_keys=True)
                if container.get("runtime")
                else "host (no container)",
            }
        )
    return {
        "summary": summary,
        "commits": summary.get("commits", []),
        "devices": summary.get("devices", []),
        "images": table(pd.DataFrame(images, columns=["declared", "runtime"]).drop_duplicates()),
        "configured_images": inputs.config.get("containers", {}),
        "artifacts": table(artifacts),
        "sources": table(sources),
        "packages": table(packages),
        "stale": manifest.get("stale", []),
        "missing": manifest.get("missing", []),
        "unrecorded": manifest.get("unrecorded", []),
        "jobs": len(manifest.get("jobs", [])),
    }


def render(
    inputs: ReportInputs,
    template: str | os.PathLike = DEFAULT_TEMPLATE,
    scale: str | None = None,
) -> str:
    """The page. ``scale`` (the config's ``scale:``, smoke | small | paper): at ``smoke`` the
    page says, at the top and above every study table, that its numbers show that the pipeline
    runs, not findings; None shows nothing."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    template = Path(template)
    env = Environment(
        loader=FileSystemLoader(template.parent),
        autoescape=select_autoescape(["html", "j2"], default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    from markupsafe import Markup

    config = redact(inputs.config)
    training = _read_tsv(inputs.training_data) if _exists(inputs.training_data) else None
    baselines = _read_tsv(inputs.baselines) if _exists(inputs.baselines) else None
    context = {
        "title": inputs.title,
        "scale": scale,
        "smoke_notice": SMOKE_NOTICE if scale == "smoke" else None,
        "generated": now_iso(),
        "results_dir": inputs.results_dir,
        "reproduction": reproduction_section(inputs),
        "compare": compare_section(inputs),
        "metrics": metric_rows(inputs),
        "baselines": table(baselines) if baselines is not None else None,
        "baseline_plots": baseline_delta_plots(inputs),
        "studies": study_sections(inputs),
        "curves": curve_plots(inputs),
        "decoder_plots": decoder_plot_figures(inputs),
        "training_data": training_data_tables(training) if training is not None else None,
        "cost": cost_section(inputs),
        "provenance": provenance_section(inputs),
        "config_yaml": yaml.safe_dump(config, sort_keys=False, allow_unicode=True),
        "plan_yaml": yaml.safe_dump(redact(inputs.plan), sort_keys=False, allow_unicode=True)
        if inputs.plan
        else None,
        "configfiles": inputs.configfiles,
        "all_command": command_for(inputs, "all").removesuffix(" all"),
        "check_command": command_for(inputs, "check"),
    }
    for section in ("baseline_plots", "curves", "decoder_plots"):
        for figure in context[section]:
            figure["svg"] = Markup(figure["svg"])
    for study in context["studies"]:
        for figure in [*study["plots"], *study["curves"], study["intervals"]]:
            if figure is not None:
                figure["svg"] = Markup(figure["svg"])
    html = env.get_template(template.name).render(**context)
    return redact(html)


def write_report(
    inputs: ReportInputs,
    output: str | os.PathLike,
    template: str | os.PathLike = DEFAULT_TEMPLATE,
    scale: str | None = None,
) -> str:
    """Render the page (see :func:`render` for ``scale``) and write it atomically."""
    html = render(inputs, template, scale=scale)
    write_text_atomic(output, html)
    return html
