"""Comparing distributions: aligning two id -> distribution maps, the 341-item baselines, reports, plots.

Distribution files themselves are read and written by `capo.data.loaders` (`read_distributions`,
`write_distributions`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from capo.data.loaders import load_nli341
from capo.data.schema import NLI
from capo.errors import DataError
from capo.evaluate.figures import save_figure
from capo.evaluate.metrics import distribution_report

BASELINES = ("uniform", "mnli_onehot", "mnli_dist", "varierr_dist", "chaosnli")
# Distribution name in `Item.distributions` behind each baseline (uniform is built here).
_BASELINE_SOURCE = {"mnli_onehot": "mnli_onehot", "mnli_dist": "mnli", "varierr_dist": "varierr", "chaosnli": "chaosnli"}


def join(
    human: Mapping[str, Sequence[float]], model: Mapping[str, Sequence[float]], *, human_name="human", model_name="model"
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Align two id -> distribution maps; ids present in one but not the other are an error."""
    missing = sorted(set(human) - set(model))
    extra = sorted(set(model) - set(human))
    if missing or extra:
        first = (missing or extra)[0]
        which = f"in {human_name} but not in {model_name}" if missing else f"in {model_name} but not in {human_name}"
        raise DataError(f"ids do not match: {len(missing) + len(extra)} mismatched, e.g. {first!r} is {which}")
    ids = sorted(human)
    return ids, np.array([human[i] for i in ids]), np.array([model[i] for i in ids])


def baseline_distributions(items=None) -> dict[str, dict[str, list[float]]]:
    """Each baseline's id -> distribution on the 341-item set, plus `human` (ChaosNLI) to compare against."""
    items = load_nli341() if items is None else items
    out = {"human": {i.id: i.distributions["chaosnli"] for i in items}}
    out["uniform"] = {i.id: [1 / 3] * 3 for i in items}
    for name, source in _BASELINE_SOURCE.items():
        out[name] = {i.id: i.distributions[source] for i in items}
    return out


def baseline_report(dists=None, *, classification: bool = False) -> dict[str, dict[str, float]]:
    """Each baseline scored against ChaosNLI; `dists` as `baseline_distributions()` returns (built when None)."""
    dists = baseline_distributions() if dists is None else dists
    report = {}
    for name in BASELINES:
        _, h, m = join(dists["human"], dists[name])
        report[name] = distribution_report(h, m, classification=classification)
    return report


def format_table(report: Mapping[str, Mapping[str, float]], columns: Sequence[str] = ("kl", "jsd", "tvd", "dcorr")) -> str:
    """A Markdown table, one row per source."""
    lines = ["| source | " + " | ".join(columns) + " |", "| --- |" + " ---: |" * len(columns)]
    for name, row in report.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.4f}" for c in columns) + " |")
    return "\n".join(lines)


def ternary_plot(named: Mapping[str, Mapping[str, Sequence[float]]], path: str | Path, title: str = "") -> None:
    """Scatter each named set of [E, N, C] distributions on one triangle, one panel per name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    corners = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, np.sqrt(3) / 2]])  # E, N, C
    fig, axes = plt.subplots(1, len(named), figsize=(3.2 * len(named), 3.2), squeeze=False)
    for ax, (name, dists) in zip(axes[0], named.items()):
        xy = np.array(list(dists.values())) @ corners
        ax.fill(*corners.T, facecolor="none", edgecolor="black", linewidth=0.8)
        ax.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.5)
        for (x, y), label, dx, dy in zip(corners, NLI.short, (-0.05, 0.02, -0.015), (-0.05, -0.05, 0.03)):
            ax.text(x + dx, y + dy, label.upper())
        ax.set_title(name, fontsize=9)
        ax.set_aspect("equal")
        ax.axis("off")
    if title:
        fig.suptitle(title)
    save_figure(fig, path, dpi=120)

