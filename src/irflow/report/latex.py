"""A study table as LaTeX for a paper: ``results/tables/studies/<study>.tex``.

One ``table`` float with a booktabs ``tabular`` (the including document needs
``\\usepackage{booktabs}``, nothing else): arms as rows, the study's measures as columns, the
same rows, order, bold cells and marks as the report's compact table
(:mod:`irflow.report.compact`). The best mean of a group is bold; ``$^{\\dagger}$`` /
``$^{\\ddagger}$`` mark a row significantly better / worse than its reference (the baseline arm,
or for an untrained row its trained arm) after Holm's correction; the caption names the test,
the correction and alpha. Every name taken from the configuration (study, arms, datasets,
measures) is escaped, so ``kd_lion`` prints as written.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from irflow.io import InputError, write_text_atomic
from irflow.report import compact

_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
}
MARKS = {"better": r"$^{\dagger}$", "worse": r"$^{\ddagger}$"}
SMOKE_NOTE = "Smoke scale: these numbers show that the pipeline runs, not findings."


def escape(text: object) -> str:
    """Text for LaTeX's text mode: its ten special characters (and < > |) spelled out."""
    return "".join(_SPECIAL.get(ch, ch) for ch in str(text))


def _label(study: str) -> str:
    return "tab:study-" + re.sub(r"[^A-Za-z0-9-]+", "-", study).strip("-")


def study_latex(frame: pd.DataFrame, study: str, spec: dict, scale: str | None = None) -> str:
    """The ``table`` environment of one study table (a frame read from its TSV)."""
    measures, rows = compact.compact_rows(frame, spec)
    if not measures:
        raise InputError(f"study {study}: the table has no measure columns")
    baseline = spec.get("baseline") or (spec.get("arms") or [""])[0]
    datasets = list(dict.fromkeys(r.dataset for r in rows))
    width = len(measures) + 1
    lines = [
        f"% Study {study}: written by irflow.report.latex from the study table; "
        "needs \\usepackage{booktabs}.",
        r"\begin{table}[t]",
        r"\centering",
        r"\begin{tabular}{l" + "r" * len(measures) + "}",
        r"\toprule",
        "Arm & " + " & ".join(escape(m) for m in measures) + r" \\",
        r"\midrule",
    ]
    previous = None
    for row in rows:
        if row.dataset != (previous.dataset if previous else None):
            if previous is not None:
                lines.append(r"\midrule")
            if len(datasets) > 1:
                group = rf"\textit{{{escape(row.dataset)}}}"
                lines.append(rf"\multicolumn{{{width}}}{{l}}{{{group}}} \\")
        elif previous is not None and row.variant != previous.variant:
            lines.append(r"\addlinespace")
        cells = [escape(row.label)]
        for measure in measures:
            cell = row.cells[measure]
            text = "" if cell.mean is None else f"{cell.mean:.4f}"
            if text and cell.best:
                text = rf"\textbf{{{text}}}"
            text += MARKS.get(cell.sig, "")
            if cell.sd is not None:
                text += rf"\,{{\scriptsize $\pm${cell.sd:.4f}}}"
            cells.append(text)
        lines.append(" & ".join(cells) + r" \\")
        previous = row
    lines += [r"\bottomrule", r"\end{tabular}"]
    where = f" on {escape(datasets[0])}" if len(datasets) == 1 else ""
    caption = (
        f"Study \\texttt{{{escape(study)}}}{where}: mean over queries. Bold: the best of each "
        "group (arms of one dataset and variant). "
        f"{MARKS['better']}/{MARKS['worse']}: significantly better/worse than the baseline arm "
        f"\\texttt{{{escape(baseline)}}} (an untrained row: than its trained arm), "
        f"{escape(compact.describe_test(spec))} over queries with Holm's correction over the "
        f"study's comparisons of each measure, $p < {float(spec.get('alpha', 0.05)):g}$."
    )
    seeded = sorted({row.seeds for row in rows if row.seeds > 1})
    if seeded:
        caption += (
            " $\\pm$: standard deviation over the seeds of arms trained on "
            f"{'/'.join(map(str, seeded))} seeds; their comparisons use a two-level paired "
            "bootstrap over queries and seeds."
        )
    if spec.get("description"):
        caption = escape(str(spec["description"]).strip()) + " " + caption
    if scale == "smoke":
        caption = rf"\textbf{{{SMOKE_NOTE}}} " + caption
    lines += [rf"\caption{{{caption}}}", rf"\label{{{_label(study)}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_study_latex(
    study: str,
    spec: dict,
    table_tsv: str | os.PathLike,
    tex_out: str | os.PathLike,
    scale: str | None = None,
) -> str:
    """Write ``tex_out`` (e.g. ``results/tables/studies/<study>.tex``) from the study table TSV
    that :func:`irflow.studies.write_study_table` wrote; returns the LaTeX. ``scale`` 'smoke'
    puts the smoke-scale sentence at the start of the caption."""
    try:
        frame = pd.read_csv(table_tsv, sep="\t", dtype={"run": str, "dataset": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise InputError(f"{table_tsv}: cannot read the study table ({err})") from None
    text = study_latex(frame, study, spec, scale=scale)
    write_text_atomic(Path(tex_out), text)
    return text
