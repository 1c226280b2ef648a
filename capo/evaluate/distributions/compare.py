"""Comparing distributions: aligning two id -> distribution maps, the 341-item baselines, reports, plots, and
`compare_distributions`, what `eval/distributions.py` runs.

Distribution files themselves are read and written by `capo.data.distributions` (`read_distributions`,
`write_distributions`)."""

from __future__ import annotations

import csv
import io
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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


def format_csv(report: Mapping[str, Mapping[str, float]], columns: Sequence[str]) -> str:
    """The table as CSV, one row per source (item counts as integers, metrics to 6 decimals)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["source", *columns])
    for name, row in report.items():
        writer.writerow([name, *(row[c] if isinstance(row[c], int) else f"{row[c]:.6f}" for c in columns)])
    return buffer.getvalue()


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



@dataclass
class DistributionsArguments:
    """Arguments of `eval/distributions.py`: the baselines against ChaosNLI, or a model file against a human file."""

    baselines: bool = field(default=False, metadata={"help": "score the 341-item baselines against ChaosNLI"})
    human: str | None = field(default=None, metadata={"help": "human distribution JSONL (id, distribution)"})
    model: str | None = field(default=None, metadata={"help": "model distribution JSONL (id, distribution)"})
    json: bool = field(default=False, metadata={"help": "print a JSON object instead of a table"})
    classification: bool = field(default=False,
                                 metadata={"help": "add accuracy/F1 against argmax(human), soft CE"})
    plot: str | None = field(default=None, metadata={"help": "write a ternary plot (PNG)"})
    csv: str | None = field(default=None, metadata={"help": "also write the table as CSV"})
    report: str | None = field(default=None, metadata={"help": "also write the report as JSON"})
    count_items: bool = field(default=False, metadata={"help": "add each row's item count (items)"})
    allow_partial: bool = field(default=False, metadata={
        "help": "score a model file that covers only some of the human items (on those; the report records how many)"})

    def __post_init__(self) -> None:
        if self.baselines == bool(self.human or self.model):
            raise DataError("give either --baselines, or both --human and --model")
        if not self.baselines and not (self.human and self.model):
            raise DataError("--human and --model go together")


def compare_distributions(args: DistributionsArguments) -> dict[str, dict[str, float]]:
    """Source -> its row (KL, JS distance, TVD, distance correlation, and what the flags add): every baseline
    against ChaosNLI, or the model file (named by its stem) against the human file; writes the CSV, the JSON report
    and the ternary plot asked for. A model file must cover every human item unless `allow_partial`, when the row
    says on how many of how many (`items`, `human_items`)."""
    from capo.data.distributions import read_distributions
    from capo.io import atomic_write_text, check_output, write_json

    for path in (args.csv, args.plot, args.report):
        if path:
            check_output(path)
    if args.baselines:
        dists = baseline_distributions()
        report = baseline_report(dists, classification=args.classification)
        counts = dict.fromkeys(report, len(dists["human"]))
        plotted = {k: v for k, v in dists.items() if k != "human"}
    else:
        human, model = read_distributions(args.human), read_distributions(args.model)
        ids, h, m = join(human, model, human_name=args.human, model_name=args.model, allow_partial=args.allow_partial)
        name = Path(args.model).stem
        report = {name: distribution_report(h, m, classification=args.classification)}
        if args.allow_partial:  # the numbers rest on these many of the human items
            report[name].update(items=len(ids), human_items=len(human))
        counts = {name: len(ids)}
        plotted = {"human": human, name: model}
    if args.count_items:
        for name, row in report.items():
            row.setdefault("items", counts[name])
    columns = list(next(iter(report.values())))
    if args.csv:
        atomic_write_text(args.csv, format_csv(report, columns))
    if args.report:
        write_json(args.report, report)
    if args.plot:
        ternary_plot(plotted, args.plot, title="341 VariErr items: [E, N, C] distributions")
    return report
