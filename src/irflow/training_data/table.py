"""One table of the training-data statistics: what each stage kept and dropped, and why.

Rows are read from the stats JSON beside every artifact; the artifact's path below the results
folder says which stage wrote it (``training-data/<train>/queries``,
``training-data/<train>/negatives/<miner>``, ``teacher-scores/<train>/<miner>/<teacher>``,
``filtered/<train>/<miner>/<teacher>/<filter>``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from irflow.io import InputError, atomic_output

# Stats keys shown per stage, in order; absent keys are left empty.
STAGE_COLUMNS: dict[str, list[str]] = {
    "queries": ["selected_queries", "selected_positives", "dropped_leaking_queries"],
    "negatives": [
        "samples",
        "negatives",
        "candidates_considered",
        "dropped_judged_positive",
        "dropped_judged_relevant",
        "dropped_relative_margin",
        "dropped_absolute_margin",
        "samples_positive_not_in_run",
    ],
    "teacher-scores": ["samples", "pairs"],
    "filtered": [
        "samples_in",
        "samples_out",
        "negatives_in",
        "negatives_out",
        "negatives_dropped_inconsistent",
        "samples_dropped_inconsistent",
        "samples_dropped_too_few_negatives",
    ],
}


def _row(path: Path, results_dir: Path) -> dict[str, Any]:
    relative = path.relative_to(results_dir).as_posix().removesuffix(".stats.json")
    parts = relative.split("/")
    if parts[0] == "training-data" and len(parts) == 3 and parts[2] == "queries":
        stage, names = "queries", {"training_set": parts[1]}
    elif parts[0] == "training-data" and len(parts) == 4 and parts[2] == "negatives":
        stage, names = "negatives", {"training_set": parts[1], "miner": parts[3]}
    elif parts[0] == "teacher-scores" and len(parts) == 4:
        stage, names = (
            "teacher-scores",
            dict(zip(("training_set", "miner", "teacher"), parts[1:], strict=True)),
        )
    elif parts[0] == "filtered" and len(parts) == 5:
        stage = "filtered"
        names = dict(zip(("training_set", "miner", "teacher", "filter"), parts[1:], strict=True))
    else:
        raise InputError(f"{path}: not a training-data stats file")
    stats = json.loads(path.read_text())
    row: dict[str, Any] = {"stage": stage, "artifact": relative, **names}
    for key in STAGE_COLUMNS[stage]:
        row[key] = stats.get(key)
    return row


def training_data_table(stats_paths: list[str], results_dir: str, tsv_out: str, md_out: str):
    root = Path(results_dir)
    rows = [_row(Path(p), root) for p in stats_paths]
    if not rows:
        raise InputError("no training-data statistics to tabulate")
    table = pd.DataFrame(rows)
    table = table.dropna(axis=1, how="all")
    with atomic_output(tsv_out) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    with atomic_output(md_out) as tmp:
        sections = ["# Training data\n"]
        for stage in STAGE_COLUMNS:
            part = table[table.stage == stage]
            if not len(part):
                # (An empty frame would lose every column to dropna, "stage" included.)
                continue
            part = part.dropna(axis=1, how="all").drop(columns="stage")
            if len(part):
                sections.append(f"## {stage}\n\n{part.to_markdown(index=False)}\n")
        tmp.write_text("\n".join(sections), encoding="utf-8")
    return table
