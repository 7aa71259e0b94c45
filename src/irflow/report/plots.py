"""Plots of the report as inline SVG (matplotlib, Agg backend): nothing to fetch, nothing to run.

Every figure is rendered to an SVG string with a fixed hash salt and no date, so the same data
gives the same bytes, and text is kept as text (``svg.fonttype: none``) so the page stays small
and searchable.
"""

from __future__ import annotations

import io
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (the backend must be chosen first)
import numpy as np  # noqa: E402

STYLE = {
    "svg.fonttype": "none",
    "svg.hashsalt": "irflow",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
WIN, LOSS, NEUTRAL = "#2a7d4f", "#b03a2e", "#7f8c8d"


def _svg(fig) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return inline_svg(buffer.getvalue())


def inline_svg(text: str) -> str:
    """An SVG document as an element for inline HTML: without the XML declaration and the
    DOCTYPE, which HTML needs neither of."""
    text = re.sub(r"^<\?xml[^>]*>\s*", "", text)
    return re.sub(r"<!DOCTYPE[^>]*>\s*", "", text)


def per_query_delta(
    query_ids: list[str], deltas: list[float], title: str, measure: str, reference: str
) -> str:
    """Sorted per-query differences (row − reference) as bars: wins above, losses below."""
    order = np.argsort(np.asarray(deltas, dtype=float), kind="stable")[::-1]
    values = np.asarray(deltas, dtype=float)[order]
    wins, losses = int((values > 0).sum()), int((values < 0).sum())
    ties = len(values) - wins - losses
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(7.5, 2.6))
        colors = [WIN if v > 0 else LOSS if v < 0 else NEUTRAL for v in values]
        ax.bar(np.arange(len(values)), values, width=1.0, color=colors, linewidth=0)
        ax.axhline(0, color="#333333", linewidth=0.6)
        ax.set_xlim(-0.5, max(len(values), 1) - 0.5)
        ax.set_xticks([])
        ax.set_xlabel(f"{len(values)} queries, sorted by difference")
        ax.set_ylabel(f"Δ {measure}")
        ax.set_title(
            f"{title}: {wins} better, {losses} worse, {ties} equal vs {reference} "
            f"(mean Δ {values.mean() if len(values) else 0:+.4f})",
            fontsize=9,
            loc="left",
        )
        return _svg(fig)


def training_curves(rows: list[dict], title: str) -> str | None:
    """Loss-like series against the step; the learning rate on its own panel when logged."""
    rows = [r for r in rows if isinstance(r.get("step"), int | float)]
    if not rows:
        return None
    numeric = sorted(
        {
            key
            for row in rows
            for key, value in row.items()
            if key != "step" and isinstance(value, int | float) and not isinstance(value, bool)
        }
    )
    losses = [k for k in numeric if "loss" in k]
    others = [k for k in numeric if k not in losses and k not in ("lr", "epoch")]
    panels = [p for p in (losses, ["lr"] if "lr" in numeric else [], others) if p]
    if not panels:
        return None
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 2.6), squeeze=False)
        for ax, keys in zip(axes[0], panels, strict=True):
            for key in keys:
                points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), int | float)]
                if points:
                    xs, ys = zip(*points, strict=True)
                    ax.plot(xs, ys, linewidth=1.2, label=key)
            ax.set_xlabel("step")
            if len(keys) > 1 or keys != ["lr"]:
                ax.legend(fontsize=7, frameon=False)
            else:
                ax.set_ylabel("learning rate")
        fig.suptitle(title, fontsize=9, x=0.01, ha="left")
        return _svg(fig)


PALETTE = ("#1f5f8b", "#c0392b", "#2a7d4f", "#8e44ad", "#d68910", "#17a589", "#5d6d7e",
           "#a04000", "#2e4053", "#b7950b")  # fmt: skip


def arm_intervals(
    labels: list[str],
    measure: str,
    intervals: list[tuple[float, float, float] | None],
    baseline: list[bool],
    groups: list[str] | None = None,
) -> str:
    """Every row's mean of one measure with its 95 % interval, rows top to bottom (one panel;
    the report sets a study's panels side by side, so that a phone stacks them).

    ``intervals[i]``: (mean, low, high) of row ``labels[i]`` or None; ``baseline[i]`` marks
    the baseline's rows (drawn hollow, with a dotted line through their mean across their
    group); ``groups`` (e.g. dataset and variant of each row) draws a rule where it changes."""
    n = len(labels)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(3.0, 0.55 + 0.24 * n))
        ys = np.arange(n)[::-1]
        for i, entry in enumerate(intervals):
            if entry is None:
                continue
            mean, low, high = entry
            color = NEUTRAL if baseline[i] else PALETTE[0]
            ax.plot([low, high], [ys[i], ys[i]], color=color, linewidth=1.6)
            ax.plot(
                [mean],
                [ys[i]],
                marker="o",
                markersize=4.5,
                color=color,
                markerfacecolor="white" if baseline[i] else color,
            )
            if baseline[i]:
                same = [j for j in range(n) if groups is None or groups[j] == groups[i]]
                span = [ys[same[0]] + 0.5, ys[same[-1]] - 0.5]
                ax.plot([mean, mean], span, color=NEUTRAL, linewidth=0.6, linestyle=":")
        if groups is not None:
            for i in range(1, n):
                if groups[i] != groups[i - 1]:
                    ax.axhline(ys[i] + 0.5, color="#cccccc", linewidth=0.6)
        ax.set_title(f"{measure} (95 % interval)", fontsize=9, loc="left")
        ax.set_ylim(-0.6, n - 0.4)
        ax.set_yticks(ys)
        ax.set_yticklabels(labels)
        ax.grid(axis="x", color="#eeeeee", linewidth=0.6)
        ax.tick_params(axis="y", length=0)
        return _svg(fig)


def overlaid_curves(
    series: dict[str, list[tuple[float, float]]], title: str, ylabel: str, xlabel: str = "step"
) -> str | None:
    """One line per arm (``series``: arm -> [(step, value)]), in one plot."""
    series = {name: points for name, points in series.items() if points}
    if not series:
        return None
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(4.6, 2.8))
        for k, (name, points) in enumerate(series.items()):
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, linewidth=1.2, label=name, color=PALETTE[k % len(PALETTE)])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7, frameon=False)
        ax.set_title(title, fontsize=9, loc="left")
        return _svg(fig)
