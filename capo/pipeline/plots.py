"""The report's own plots (training curves, imitation against group size, LeWiDi bars); the ternary and confusion
plots are the evaluation stage's (`capo.evaluate.distributions.compare.ternary_plot`, `capo.evaluate.behaviour.judges.confusion_plot`).
Every PNG goes through `capo.evaluate.figures.save_figure` (complete or not at all)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from capo.evaluate.figures import save_figure


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_curves(curves: Mapping[str, Mapping[str, Sequence[tuple[int, float]]]], path: str | Path) -> None:
    """One panel per training kind (SFT, CAPO), one line per adapter: training loss against optimizer step."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(4.5 * len(curves), 3.4), squeeze=False)
    for ax, (kind, lines) in zip(axes[0], curves.items(), strict=True):
        for name, points in lines.items():
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=name)
        ax.set_title(f"{kind.upper()} training loss", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        if lines:
            ax.legend(fontsize=7)
    save_figure(fig, path)


def imitation_by_k(series: Mapping[str, Sequence[tuple[int, float]]], ceiling: Mapping[str, Sequence[tuple[int, float]]],
                   path: str | Path, title: str) -> None:
    """Share of groups of k generated responses the judge attributes to the target (solid), beside the same for
    the target's own held-out responses (dashed: the human ceiling), against k."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, points in series.items():
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=name)
    for name, points in ceiling.items():
        if points:
            ax.plot(*zip(*points, strict=True), linestyle="--", color="grey", linewidth=0.8,
                    label=f"human ceiling {name}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("group size k (responses on distinct items)")
    ax.set_ylabel("recognised as the target")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=6)
    save_figure(fig, path)


def lewidi_bars(rows: Sequence[Mapping], path: str | Path) -> None:
    """Perspectivist and soft scores (lower is better) per dataset/split, one bar per predictor."""
    import numpy as np

    plt = _pyplot()
    groups = list(dict.fromkeys(f"{r['dataset']} {r['split']}" for r in rows))
    predictors = list(dict.fromkeys(r["predictor"] for r in rows))
    width = 0.8 / max(len(predictors), 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, metric in zip(axes, ("perspectivist", "soft"), strict=True):
        for k, predictor in enumerate(predictors):
            values = [next((r[metric] for r in rows if f"{r['dataset']} {r['split']}" == g
                            and r["predictor"] == predictor), np.nan) for g in groups]
            ax.bar(np.arange(len(groups)) + k * width, values, width, label=predictor)
        ax.set_xticks(np.arange(len(groups)) + width * (len(predictors) - 1) / 2, groups)
        ax.set_title(f"LeWiDi 2025 {metric} score (lower is better)", fontsize=10)
        ax.legend(fontsize=7)
    save_figure(fig, path)
