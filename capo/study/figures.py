"""The study report's figures, small multiples of the item-bootstrap estimates (`capo.evaluate.intervals`) it gives:
attribution per source kind, one confusion grid per task and judge, and the learning curve. Every PNG goes through
`capo.evaluate.figures.save_figure` (complete or not at all); `capo.study.report` reads the slices and calls these."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from capo.evaluate.figures import save_figure
from capo.evaluate.intervals import Estimate


def _triple(e: Estimate | None) -> tuple[float, float, float]:
    return (np.nan,) * 3 if e is None else (e.value, e.low, e.high)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _panels(n: int, width: float, height: float):
    plt = _pyplot()
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False, sharey=True)
    return fig, axes[0]


def _references(ax, ceiling: float | None, chance: float) -> None:
    if ceiling is not None and np.isfinite(ceiling):
        ax.axhline(ceiling, color="black", linestyle="--", linewidth=1, label="human ceiling")
        ax.set_title(f"{ax.get_title()} (ceiling {ceiling:.2f})", fontsize=10)
    ax.axhline(chance, color="grey", linestyle=":", linewidth=1, label=f"chance {chance:.2f}")


def confusion_matrix(pairs: Sequence[tuple[int, int]], k: int) -> np.ndarray:
    """Row-normalised k x k matrix of (true, judged) index pairs (rows without responses stay 0)."""
    matrix = np.zeros((k, k))
    for true, judged in pairs:
        matrix[true, judged] += 1
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.nan_to_num(matrix / matrix.sum(axis=1, keepdims=True))


def attribution_figure(task: str, judges: Sequence[str], kinds: Sequence[str],
                       points: Mapping[tuple[str, str], Estimate], ceiling: Mapping[str, float], chance: float,
                       path: str | Path) -> None:
    """One panel per judge: accuracy per source kind with its item-bootstrap interval, the human ceiling dashed and
    chance dotted."""
    fig, axes = _panels(len(judges), max(3.2, 0.55 * len(kinds) + 1.4), 3.6)
    x = np.arange(len(kinds))
    for ax, judge in zip(axes, judges, strict=True):
        values = np.array([_triple(points.get((k, judge))) for k in kinds], dtype=float)
        err = np.abs(np.vstack([values[:, 0] - values[:, 1], values[:, 2] - values[:, 0]]))
        ax.errorbar(x, values[:, 0], yerr=np.nan_to_num(err), fmt="o", color="tab:blue", capsize=3)
        ax.set_title(f"{task}: judge {judge}", fontsize=10)
        _references(ax, ceiling.get(judge), chance)
        ax.set_xticks(x, kinds, rotation=45, ha="right", fontsize=8)
        ax.set_ylim(0, 1.05)
    _legend_below(fig, axes)
    _save_no_relayout(fig, path)


def confusion_grid(task: str, judge: str, annotators: Sequence[str], matrices: Mapping[str, np.ndarray],
                   path: str | Path) -> None:
    """One small row-normalised confusion matrix per source kind (rows: true target, columns: judged), one shared
    colour scale 0-1."""
    plt = _pyplot()
    n = len(matrices)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols + 0.9, 2.3 * rows + 0.5), squeeze=False)
    image = None
    for ax, (kind, matrix) in zip(axes.flat, matrices.items(), strict=False):
        image = ax.imshow(matrix, vmin=0, vmax=1, cmap="Blues")
        for (r, c), v in np.ndenumerate(matrix):
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=6.5, color="white" if v > 0.6 else "black")
        ax.set_xticks(range(len(annotators)), annotators, fontsize=7)
        ax.set_yticks(range(len(annotators)), annotators, fontsize=7)
        ax.set_title(kind, fontsize=9)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("true target", fontsize=8)
    for ax in axes[-1, :]:
        ax.set_xlabel("judged", fontsize=8)
    fig.suptitle(f"{task}: judge {judge}", fontsize=10)
    fig.tight_layout()
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, fraction=0.04)
    _save_no_relayout(fig, path)


def _legend_below(fig, axes) -> None:
    """The y label, then one legend for all panels in a strip under them (inside the canvas, over no data)."""
    axes[0].set_ylabel("attributed to the target")
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:  # the ceiling differs per judge: every panel's own line, once
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=7, frameon=False)


def _save_no_relayout(fig, path: str | Path) -> None:
    """`save_figure` without its tight_layout (a colorbar beside a grid of axes does not take one)."""
    fig.set_layout_engine("none")
    fig.tight_layout = lambda *a, **k: None
    save_figure(fig, path)


def curve_figure(task: str, judges: Sequence[str], points: Mapping[str, Sequence[tuple[int, Estimate]]],
                 capo: Mapping[str, tuple[float, Estimate]], ceiling: Mapping[str, float], chance: float,
                 path: str | Path) -> None:
    """One panel per judge: SFT attribution against optimizer steps (mean over seeds, item-bootstrap band), CAPO as
    one point at its step, the human ceiling dashed and chance dotted."""
    fig, axes = _panels(len(judges), 3.6, 3.2)
    for ax, judge in zip(axes, judges, strict=True):
        line = points.get(judge, [])
        if line:
            steps = [s for s, _ in line]
            v = np.array([_triple(p) for _, p in line], dtype=float)
            ax.plot(steps, v[:, 0], marker="o", markersize=4, color="tab:blue", label="SFT")
            ax.fill_between(steps, v[:, 1], v[:, 2], color="tab:blue", alpha=0.2, linewidth=0)
        if judge in capo:
            step, (value, low, high) = capo[judge][0], _triple(capo[judge][1])
            err = [[max(value - low, 0)], [max(high - value, 0)]] if np.isfinite(low) else None
            ax.errorbar([step], [value], yerr=err, fmt="s", color="tab:red", capsize=3, label="CAPO")
        ax.set_title(f"{task}: judge {judge}", fontsize=10)
        _references(ax, ceiling.get(judge), chance)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("optimizer steps")
    _legend_below(fig, axes)
    _save_no_relayout(fig, path)
