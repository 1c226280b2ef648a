"""Comparing distributions: aligning two id -> distribution maps, the 341-item baselines, the constant predictors
every table carries (uniform and the label prior, `constant_distributions`), an MJD run's estimator variants from its
raw scores (`variant_distributions`), reports, plots, and `compare_distributions`, what `eval/distributions.py` runs.

Distribution files themselves are read and written by `capo.data.distributions` (`read_distributions`,
`write_distributions`)."""

from __future__ import annotations

import csv
import io
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from capo.data.formats.common import CHAOS_DIR
from capo.data.formats.mjd_files import load_chaosnli, load_nli341
from capo.data.schema import NLI
from capo.errors import DataError
from capo.evaluate.distributions.metrics import distribution_report
from capo.evaluate.figures import save_figure
from capo.mjd.estimate import VARIANTS, mjd_variants

# The constant predictors, built here (`constant_distributions`): one distribution predicted for every item.
CONSTANTS = ("uniform", "label_prior")
BASELINES = ("uniform", "label_prior", "mnli_onehot", "mnli_dist", "varierr_dist", "chaosnli")
# Distribution name in `Item.distributions` behind each other baseline.
_BASELINE_SOURCE = {"mnli_onehot": "mnli_onehot", "mnli_dist": "mnli", "varierr_dist": "varierr", "chaosnli": "chaosnli"}
NO_RAW = "n/a (no raw scores)"
NOT_POSITIVE = "n/a (a raw score <= 0)"
VARIANTS_NOTE = (
    "Per MJD run, its estimator variants from the run's raw per-prompt letter scores, each prompt's letters mapped "
    "back to labels: `p_norm` (s / sum s per prompt, averaged over the option orders: the papers' default), softmax at "
    "`T=1` and `T=20` (averaged likewise), and `log-space` (the softmax of the mean per-order letter log-probability), "
    "a position-bias diagnostic that cancels an additive per-position logit bias exactly and is not the papers' "
    f"estimator; `{NO_RAW}` where the run saved none (`recipes/mjd.py --save_raw_scores true` saves them)")


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


@lru_cache(maxsize=1)
def _chaosnli_dev() -> tuple[tuple[float, ...], frozenset[str]]:
    items = load_chaosnli(CHAOS_DIR / "dev.json")
    mean = np.mean([item.distributions["chaosnli"] for item in items], axis=0)
    return tuple(float(x) for x in mean), frozenset(item.id for item in items)


def label_prior() -> list[float]:
    """The label-prior constant, [E, N, C]: the mean HJD of ChaosNLI dev (the vendored dev file; dev only)."""
    return list(_chaosnli_dev()[0])


def chaosnli_dev_items(ids: Iterable[str]) -> int:
    """How many of `ids` are ChaosNLI dev items: for them the label prior is in-sample (their own HJD is in it)."""
    return len(set(ids) & _chaosnli_dev()[1])


def constant_distributions(ids: Iterable[str], n_labels: int = len(NLI)) -> dict[str, dict[str, list[float]] | None]:
    """Each constant predictor (`CONSTANTS`) as id -> distribution for `ids`: `uniform`, and `label_prior` (the mean
    ChaosNLI-dev HJD for every item; None where the items are not 3-way NLI, which it is not defined for)."""
    ids = list(ids)
    prior = label_prior() if n_labels == len(NLI) else None
    return {"uniform": {i: [1 / n_labels] * n_labels for i in ids},
            "label_prior": None if prior is None else {i: list(prior) for i in ids}}


def constants_note(ids: Collection[str]) -> str:
    """The caption sentence of the constant rows scored on `ids`: what the label prior is and whether it is in-sample
    for them (the items that are ChaosNLI dev items; no cross-fitting), and what a constant's dcorr means."""
    prior = ", ".join(f"{x:.3f}" for x in label_prior())
    n_dev = chaosnli_dev_items(ids)
    sample = (f"in-sample for {n_dev} of the {len(ids)} scored items (they are ChaosNLI dev items, so their own HJDs "
              "are in the mean; not cross-fitted)" if n_dev else "out of sample for every scored item (none is a "
              "ChaosNLI dev item)")
    return (f"`uniform` and `label_prior` are constant predictors: `label_prior` predicts the mean HJD of ChaosNLI dev "
            f"[{prior}] ([E, N, C], {len(_chaosnli_dev()[1])} items, dev only) for every item, {sample}; the distance "
            "correlation of a constant is undefined, and dcor's convention of 0 is shown")


def variant_distributions(scores: Mapping[str, np.ndarray], ids: Sequence[str]) -> dict[str, dict | None]:
    """Each MJD estimator variant (`capo.mjd.estimate.VARIANTS`) as id -> distribution for `ids`, from the items'
    (prompts x labels) raw scores in label order (`capo.mjd.estimate.read_raw_scores`); None for `p_norm` when a
    score is <= 0."""
    per_item = {i: mjd_variants(scores[i]) for i in ids}
    return {v: None if any(per_item[i][v] is None for i in ids) else {i: per_item[i][v].tolist() for i in ids}
            for v in VARIANTS}


def baseline_distributions(items=None) -> dict[str, dict[str, list[float]]]:
    """Each baseline's id -> distribution on the 341-item set, plus `human` (ChaosNLI) to compare against."""
    items = load_nli341() if items is None else items
    out = {"human": {i.id: i.distributions["chaosnli"] for i in items}}
    out |= constant_distributions(out["human"])
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


def na_row(reason: str, columns: Iterable[str]) -> dict[str, str]:
    """A row that could not be scored: `reason` (e.g. `NO_RAW`) in every metric column."""
    return dict.fromkeys(columns, reason)


def _cell(value, digits: int) -> str:
    """Item counts (ints) and n/a reasons (strings) as they are, metrics to `digits` decimals."""
    return str(value) if isinstance(value, int | str) else f"{value:.{digits}f}"


def format_table(report: Mapping[str, Mapping[str, float]], columns: Sequence[str] = ("kl", "jsd", "tvd", "dcorr")) -> str:
    """A Markdown table, one row per source."""
    lines = ["| source | " + " | ".join(columns) + " |", "| --- |" + " ---: |" * len(columns)]
    for name, row in report.items():
        lines.append(f"| {name} | " + " | ".join(_cell(row[c], 4) for c in columns) + " |")
    return "\n".join(lines)


def format_csv(report: Mapping[str, Mapping[str, float]], columns: Sequence[str]) -> str:
    """The table as CSV, one row per source (item counts as integers, metrics to 6 decimals, n/a as said)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["source", *columns])
    for name, row in report.items():
        writer.writerow([name, *(_cell(row[c], 6) for c in columns)])
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
    constants: bool = field(default=True, metadata={
        "help": "with --human/--model: also score the constant predictors (uniform; label_prior, the mean ChaosNLI-dev "
                "HJD) on the same items"})
    raw: str | None = field(default=None, metadata={
        "help": "raw_scores.jsonl of the MJD run that wrote --model (recipes/mjd.py --save_raw_scores true): add its "
                "estimator variants (p_norm, T=1, T=20, log-space) as rows"})
    mjd_variants: bool = field(default=False, metadata={
        "help": "add the MJD estimator-variant rows (implied by --raw; without it they say n/a (no raw scores))"})

    def __post_init__(self) -> None:
        if self.baselines == bool(self.human or self.model):
            raise DataError("give either --baselines, or both --human and --model")
        if not self.baselines and not (self.human and self.model):
            raise DataError("--human and --model go together")
        if self.baselines and (self.raw or self.mjd_variants):
            raise DataError("--raw and --mjd_variants go with --human and --model (an MJD run's files)")


def _scored(h: np.ndarray, ids: Sequence[str], named: Mapping[str, Mapping[str, Sequence[float]] | None],
            reason: str, columns: Iterable[str], classification: bool) -> dict[str, dict]:
    """Each named id -> distribution map scored against `h` (rows in `ids` order); a None map is `na_row(reason)`."""
    return {name: na_row(reason, columns) if dists is None
            else distribution_report(h, np.array([dists[i] for i in ids]), classification=classification)
            for name, dists in named.items()}


def compare_distributions(args: DistributionsArguments, notes: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Source -> its row (KL, JS distance, TVD, distance correlation, and what the flags add): every baseline
    against ChaosNLI, or the model file (named by its stem) against the human file, then (`mjd_variants`, or `raw`)
    the MJD run's estimator variants from its raw scores and (`constants`) the constant predictors on the same items;
    writes the CSV, the JSON report and the ternary plot asked for, and appends the table's caption sentences to
    `notes`. A model file must cover every human item unless `allow_partial`, when every row says on how many of how
    many (`items`, `human_items`); the raw scores must cover every item scored."""
    from capo.data.distributions import read_distributions
    from capo.io import atomic_write_text, check_output, write_json
    from capo.mjd.estimate import read_raw_scores

    notes = [] if notes is None else notes
    for path in (args.csv, args.plot, args.report):
        if path:
            check_output(path)
    if args.baselines:
        dists = baseline_distributions()
        report = baseline_report(dists, classification=args.classification)
        counts = dict.fromkeys(report, len(dists["human"]))
        plotted = {k: v for k, v in dists.items() if k != "human"}
        notes.append(constants_note(dists["human"]))
    else:
        human, model = read_distributions(args.human), read_distributions(args.model)
        scores = read_raw_scores(args.raw)[0] if args.raw else None
        ids, h, m = join(human, model, human_name=args.human, model_name=args.model, allow_partial=args.allow_partial)
        if scores is not None:
            covered(ids, scores, reference_name=args.model, covering_name=args.raw)
        name = Path(args.model).stem
        report = {name: distribution_report(h, m, classification=args.classification)}
        columns = list(report[name])
        if args.raw or args.mjd_variants:
            variants = variant_distributions(scores, ids) if scores is not None else dict.fromkeys(VARIANTS)
            named = {f"{name} {v}": dists for v, dists in variants.items()}
            report |= _scored(h, ids, named, NOT_POSITIVE if scores is not None else NO_RAW, columns,
                              args.classification)
            notes.append(VARIANTS_NOTE)
        if args.constants:
            report |= _scored(h, ids, constant_distributions(ids, h.shape[1]), "n/a (not 3-way NLI)", columns,
                              args.classification)
            notes.append(constants_note(ids))
        if args.allow_partial:  # the numbers rest on these many of the human items
            for row in report.values():
                row.update(items=len(ids), human_items=len(human))
        counts = dict.fromkeys(report, len(ids))
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
