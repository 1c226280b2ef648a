"""Comparing distributions: aligning two id -> distribution maps, the 341-item baselines, reports, plots.

Distribution files themselves are read and written by `capo.data.distributions` (`read_distributions`,
`write_distributions`)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from capo.data.formats.mjd_files import load_nli341
from capo.data.schema import NLI
from capo.errors import DataError
from capo.evaluate.distributions.metrics import distribution_report
from capo.evaluate.figures import save_figure

BASELINES = ("uniform", "mnli_onehot", "mnli_dist", "varierr_dist", "chaosnli")
# Distribution name in `Item.distributions` behind each baseline (uniform is built here).
_BASELINE_SOURCE = {"mnli_onehot": "mnli_onehot", "mnli_dist": "mnli", "varierr_dist": "varierr", "chaosnli": "chaosnli"}


def covered(reference: Iterable[str], covering: Collection[str], *, reference_name: str, covering_name: str,
            allow_partial: bool = False) -> list[str]:
    """The ids of `reference` that `covering` has, in `reference` order. A file that covers only some of them is
    refused, saying how many of how many (numbers on part of the items would pass for numbers on all of them),
    unless `allow_partial`."""
    reference = list(reference)
    ids = [i for i in reference if i in covering]
    if len(ids) < len(reference) and not allow_partial:
        first = next(i for i in reference if i not in covering)
        raise DataError(f"covers {len(ids)} of the {len(reference)} items in {reference_name} (first missing: "
                        f"{first!r}); --allow_partial true would score only those {len(ids)}", path=covering_name)
    return ids


def join(
    human: Mapping[str, Sequence[float]], model: Mapping[str, Sequence[float]], *, human_name="human", model_name="model",
    allow_partial: bool = False,
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Align two id -> distribution maps on the human ids. An id only the model has is an error; so is a model that
    covers only part of the human ids (`covered`), unless `allow_partial`: then the ids it covers are aligned."""
    missing = sorted(set(human) - set(model))
    extra = sorted(set(model) - set(human))
    if extra:
        first = (missing or extra)[0]
        which = f"in {human_name} but not in {model_name}" if missing else f"in {model_name} but not in {human_name}"
        raise DataError(f"ids do not match: {len(missing) + len(extra)} mismatched, e.g. {first!r} is {which}")
    ids = covered(sorted(human), model, reference_name=human_name, covering_name=model_name,
                  allow_partial=allow_partial)
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
        lines.append(f"| {name} | " + " | ".join(str(row[c]) if isinstance(row[c], int) else f"{row[c]:.4f}"
                                                 for c in columns) + " |")  # ints: item counts
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

