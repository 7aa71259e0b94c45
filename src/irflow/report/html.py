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
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from irflow.checks import read_reproduction_table
from irflow.io import InputError, write_text_atomic
from irflow.provenance import now_iso, redact
from irflow.report import plots

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
    reproduction: str | None = None
    cost: str | None = None
    manifest: str | None = None
    config: dict = field(default_factory=dict)
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


def study_sections(inputs: ReportInputs) -> list[dict]:
    sections = []
    for study, path in sorted(inputs.studies.items()):
        if not _exists(path):
            continue
        frame = _read_tsv(path)
        spec = inputs.study_specs.get(study, {})
        shown = table(frame)
        if {"dataset", "run"} <= set(frame.columns):
            shown["columns"].append("reproduce with")
            for cells, (_, record) in zip(shown["rows"], frame.iterrows(), strict=True):
                target = metric_target(inputs.results_dir, record["dataset"], record["run"])
                cells.append({"text": command_for(inputs, target), "class": "command"})
        plots_svg = []
        deltas_path = inputs.study_deltas.get(study)
        if _exists(deltas_path):
            deltas = _read_tsv(deltas_path)
            measures = spec.get("measures") or list(dict.fromkeys(deltas.get("measure", [])))
            primary = measures[0] if measures else None
            if primary is not None and len(deltas):
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
                "baseline": spec.get("baseline") or (spec.get("arms") or [""])[0],
                "arms": spec.get("arms", []),
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
    figures = []
    for student, path in sorted(inputs.curves.items()):
        if not _exists(path):
            continue
        rows = []
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise InputError(f"{path}:{number}: not JSON ({err.msg})") from None
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
    return {"table": table(frame, classes={"status": "status"}), "counts": counts}


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


def render(inputs: ReportInputs, template: str | os.PathLike = DEFAULT_TEMPLATE) -> str:
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
        "generated": now_iso(),
        "results_dir": inputs.results_dir,
        "reproduction": reproduction_section(inputs),
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
        "configfiles": inputs.configfiles,
        "all_command": command_for(inputs, "all").removesuffix(" all"),
        "check_command": command_for(inputs, "check"),
    }
    for section in ("baseline_plots", "curves", "decoder_plots"):
        for figure in context[section]:
            figure["svg"] = Markup(figure["svg"])
    for study in context["studies"]:
        for figure in study["plots"]:
            figure["svg"] = Markup(figure["svg"])
    html = env.get_template(template.name).render(**context)
    return redact(html)


def write_report(
    inputs: ReportInputs, output: str | os.PathLike, template: str | os.PathLike = DEFAULT_TEMPLATE
) -> str:
    html = render(inputs, template)
    write_text_atomic(output, html)
    return html
