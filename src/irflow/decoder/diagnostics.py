"""Training diagnostics of the unified decoder: files, and their heatmaps.

A diagnostics folder (written atomically by :func:`write_diagnostics`) holds, all TSV with a
header row:

``train_log.tsv``
    one row per optimizer step: ``stage step lr loss loss_embed loss_rerank aux grad_cosine
    grad_norm pcgrad_projections seconds cpu_seconds`` (``grad_cosine``: cosine of the two
    tasks' whole gradients, empty when the stage trains one task; ``seconds`` wall time,
    ``cpu_seconds`` process CPU time, the steadier figure on a shared machine).
``grad_cosine.tsv``
    per logged step of a joint stage, per decoder layer and per projection:
    ``stage step layer module cosine dot norm_embed norm_rerank``. ``module`` is a projection
    name (``q_proj`` ... ``down_proj``; for MoE-LoRA its router and experts together) or ``all``
    (every adapter parameter of the layer). Gradients are those of ``L_emb`` and
    ``L_rerank`` (before λ and PCGrad); ``cosine`` is ``nan`` when one of them is zero.
``expert_usage.tsv``
    MoE-LoRA only (header only otherwise), per stage, layer, projection, task and expert:
    ``stage layer module task expert kind tokens count fraction mean_prob`` (``kind``: shared
    or the owning task; ``fraction``: share of that task's routed top-k slots; ``mean_prob``:
    mean router probability), counted over the real (non-padding) tokens of the stage's
    training batches.
``summary.json``
    shapes for plotting: layers, modules, logged steps per stage, experts and their kinds.

:func:`plot_diagnostics` renders ``grad_cosine.svg`` (layer x logged step, one panel per joint
stage) and ``expert_usage.svg`` (layer/projection x expert, one panel per task) with
matplotlib; the SVGs carry no date and a fixed hash salt, so they are reproducible.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

from irflow.io import atomic_output

TRAIN_LOG_COLUMNS = [
    "stage", "step", "lr", "loss", "loss_embed", "loss_rerank", "aux", "grad_cosine",
    "grad_norm", "pcgrad_projections", "seconds", "cpu_seconds",
]  # fmt: skip
GRAD_COSINE_COLUMNS = [
    "stage", "step", "layer", "module", "cosine", "dot", "norm_embed", "norm_rerank",
]  # fmt: skip
EXPERT_USAGE_COLUMNS = [
    "stage", "layer", "module", "task", "expert", "kind", "tokens", "count", "fraction",
    "mean_prob",
]  # fmt: skip


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else format(value, ".8g")
    return str(value)


def _write_tsv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in columns])


def read_tsv(path: str | os.PathLike) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def write_diagnostics(
    out_dir: str | os.PathLike,
    train_log: list[dict[str, Any]],
    grad_cosine: list[dict[str, Any]],
    expert_usage: list[dict[str, Any]],
    summary: dict[str, Any],
) -> None:
    with atomic_output(out_dir, directory=True) as tmp:
        _write_tsv(tmp / "train_log.tsv", TRAIN_LOG_COLUMNS, train_log)
        _write_tsv(tmp / "grad_cosine.tsv", GRAD_COSINE_COLUMNS, grad_cosine)
        _write_tsv(tmp / "expert_usage.tsv", EXPERT_USAGE_COLUMNS, expert_usage)
        (tmp / "summary.json").write_text(
            json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        for path in tmp.iterdir():
            path.chmod(0o644)


def grad_cosine_matrix(rows: list[dict[str, str]], stage: str, module: str = "all"):
    """``(layers, steps, matrix)`` of one stage's cosines (``matrix[layer][step]``)."""
    import numpy as np

    picked = [r for r in rows if r["stage"] == stage and r["module"] == module]
    layers = sorted({int(r["layer"]) for r in picked})
    steps = sorted({int(r["step"]) for r in picked})
    matrix = np.full((len(layers), len(steps)), np.nan)
    li = {v: i for i, v in enumerate(layers)}
    si = {v: i for i, v in enumerate(steps)}
    for r in picked:
        matrix[li[int(r["layer"])], si[int(r["step"])]] = float(r["cosine"])
    return layers, steps, matrix


def expert_usage_matrix(rows: list[dict[str, str]], stage: str, task: str):
    """``(row labels, expert labels, matrix)`` of one stage's routing fractions for a task."""
    import numpy as np

    picked = [r for r in rows if r["stage"] == stage and r["task"] == task]
    keys = sorted({(int(r["layer"]), r["module"]) for r in picked})
    experts = sorted({(int(r["expert"]), r["kind"]) for r in picked})
    matrix = np.zeros((len(keys), len(experts)))
    ki = {k: i for i, k in enumerate(keys)}
    ei = {e[0]: i for i, e in enumerate(experts)}
    for r in picked:
        matrix[ki[(int(r["layer"]), r["module"])], ei[int(r["expert"])]] = float(r["fraction"])
    return [f"{layer}.{module}" for layer, module in keys], [f"{e}:{k}" for e, k in experts], matrix


def _thin(count: int, most: int = 16) -> list[int]:
    """Tick positions: all of them, or every k-th so at most ``most`` are labelled."""
    return list(range(0, count, max(1, math.ceil(count / most))))


def plot_diagnostics(
    diagnostics_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None
) -> list[Path]:
    """Render ``grad_cosine.svg`` and ``expert_usage.svg`` (into ``out_dir``, default the
    diagnostics folder itself); returns the paths written. A run without a joint stage or
    without MoE-LoRA gets a panel saying so, so the report always finds both files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    diagnostics_dir = Path(diagnostics_dir)
    out_dir = Path(out_dir) if out_dir is not None else diagnostics_dir
    plt.rcParams["svg.hashsalt"] = "irflow"
    cos_rows = read_tsv(diagnostics_dir / "grad_cosine.tsv")
    use_rows = read_tsv(diagnostics_dir / "expert_usage.tsv")
    written = []

    stages = list(dict.fromkeys(r["stage"] for r in cos_rows))
    fig, axes = plt.subplots(1, max(1, len(stages)), figsize=(5 * max(1, len(stages)), 4),
                             squeeze=False)  # fmt: skip
    if not stages:
        axes[0][0].text(0.5, 0.5, "no joint stage: no gradient cosines", ha="center")
        axes[0][0].axis("off")
    for ax, stage in zip(axes[0], stages, strict=False):
        layers, steps, matrix = grad_cosine_matrix(cos_rows, stage)
        image = ax.imshow(matrix, aspect="auto", cmap="RdBu", vmin=-1, vmax=1,
                          interpolation="nearest", origin="lower")  # fmt: skip
        ax.set_title(f"{stage}: cos(grad L_emb, grad L_rerank)")
        ax.set_xlabel("step")
        ax.set_ylabel("layer")
        rows = _thin(len(layers))
        ax.set_yticks(rows, [str(layers[i]) for i in rows])
        ticks = list(range(0, len(steps), max(1, len(steps) // 10)))
        ax.set_xticks(ticks, [str(steps[i]) for i in ticks])
        fig.colorbar(image, ax=ax)
    fig.tight_layout()
    path = out_dir / "grad_cosine.svg"
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="svg", metadata={"Date": None})
    plt.close(fig)
    written.append(path)

    use_stages = list(dict.fromkeys(r["stage"] for r in use_rows))
    stage = use_stages[-1] if use_stages else None
    tasks = sorted({r["task"] for r in use_rows if r["stage"] == stage})
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(4 * max(1, len(tasks)), 6),
                             squeeze=False)  # fmt: skip
    if not tasks:
        axes[0][0].text(0.5, 0.5, "no MoE-LoRA: no expert usage", ha="center")
        axes[0][0].axis("off")
    for ax, task in zip(axes[0], tasks, strict=False):
        labels, experts, matrix = expert_usage_matrix(use_rows, stage, task)
        image = ax.imshow(matrix, aspect="auto", cmap="viridis", vmin=0,
                          vmax=max(float(matrix.max()), 1e-9), interpolation="nearest")  # fmt: skip
        ax.set_title(f"{stage}: expert usage, task {task}")
        ax.set_xticks(range(len(experts)), experts, rotation=90)
        rows = _thin(len(labels), 40)
        ax.set_yticks(rows, [labels[i] for i in rows], fontsize=6)
        ax.set_ylabel("layer.projection")
        fig.colorbar(image, ax=ax)
    fig.tight_layout()
    path = out_dir / "expert_usage.svg"
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="svg", metadata={"Date": None})
    plt.close(fig)
    written.append(path)
    return written
