"""Training curves of a fine-tuning run (train loss and the selection-dev metrics over steps)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from capo.evaluate.figures import save_figure


def plot_training_curves(log_history: Sequence[Mapping], path: str | Path, title: str = "") -> None:
    """Training loss and dev (selection) metrics over steps, one panel each, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("loss", "train soft CE"), ("eval_loss", "selection dev soft CE"),
              ("eval_macro_f1", "selection dev macro-F1"), ("eval_kl", "selection dev KL")]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.0))
    for ax, (key, label) in zip(axes, panels):
        points = [(row["step"], row[key]) for row in log_history if key in row and "step" in row]
        if points:
            ax.plot(*zip(*points), marker="o", markersize=3)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    save_figure(fig, path, dpi=100)
