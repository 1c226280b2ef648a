"""The LeWiDi 2025 shared task on VariErrNLI (VEN) and Paraphrase (Par): prediction files, official scores,
Codabench submission files, and the organisers' two reference baselines.

Two prediction files, both JSONL, ids being the split file's own LeWiDi keys:

- per annotator (the perspectivist track), one row per (item, annotator) of the split:
  VEN `{"id": "138448", "annotator": "Ann2", "labels": ["contradiction", "neutral"]}` (an annotator may give
  several labels; `[]` predicts none of the three), Par `{"id": "248283", "annotator": "Ann1", "label": 5}`
  (Likert -5..5, a JSON integer). `A1`..`A4` are read as `Ann1`..`Ann4`.
- soft labels, one row per item: VEN `{"id": ..., "soft_label": {"contradiction": p, "entailment": p,
  "neutral": p}}` (each p in [0, 1] is one Bernoulli, the share of annotators giving that label: they need not
  sum to 1), Par `{"id": ..., "soft_label": {"-5": p, ..., "5": p}}` (11 bins summing to 1). Without a soft file,
  the soft label is aggregated from the per-annotator predictions as the organisers aggregate annotations
  (`aggregate_soft`).

Scores (`score`, lower is better; the official definitions are in `data/lewidi2025/README.md`, "Official metrics",
and the organisers' `LeWiDi_3-2025/Evaluation_LeWiDi_2025_Metrics.ipynb`): VEN soft = multilabel average Manhattan
distance, VEN perspectivist = multilabel error rate over the distinct annotators of each item, Par soft = average
Wasserstein distance over the 11 ordered bins, Par perspectivist = mean |target - prediction| / 11. The organisers
round intermediate sums to 5 decimals; these scores do not (a difference below 1e-5).

Submission files (`write_submission`): for each dataset a soft file and a perspectivist file, one
`<key>\\t<JSON list>` line per item in split order, no header, zipped flat. The nesting follows the official targets:
VEN soft `[[1-p, p] for contradiction, entailment, neutral]`, VEN perspectivist `[[0/1 per annotator] for the same
three labels]`, Par soft `[p(-5), ..., p(5)]`, Par perspectivist `[label per annotator]`. File names: participants'
public code uses two spellings, and no official specification was found:
- `VariErrNLI_test_soft.tsv`, `VariErrNLI_test_pe.tsv`, `Paraphrase_test_soft.tsv`, `Paraphrase_test_pe.tsv`
  (naming "dataset", the default): AadiSanghani/LeWidi `res/VariErrNLI_test_pe.tsv`, `res/Paraphrase_test_soft.tsv`
  (files zipped as `res.zip`) and `generate_submission_varier_nli_simple.py`;
- `ven_test_soft.tsv`, `par_test_pe.tsv`, ... (naming "short"): tomasruizt/lewidi2025
  `lewidi_lib/src/lewidi_lib.py` (`dump_submission_file`, `submission_ds_name`, zipped as `res.zip`).
Both write the rows as above (tomasruizt cites the organisers' starting-kit Colab for the VEN label order). The
perspectivist vectors are sized by the item's distinct annotators, as the official targets are (AadiSanghani sizes
them by the `annotators` slots, which the scorer's `zip` pairing misaligns when an annotator gave two labels).

Baselines: `most_frequent_predictions` (each annotator's most frequent train value) and `random_predictions`.
The published most-frequent VEN test score, 0.345, is reproduced by `vote="value"` (the most frequent 0/1 value of
each annotator's train label-presence vectors, which is 0: the empty label set); each annotator's most frequent
label set scores 0.355 and a per-label majority 0.341 (see docs/results.md).
"""

from __future__ import annotations

import io
import json
import zipfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from capo.data.lewidi import (
    LEWIDI_DATASETS,
    PAR_LABELS,
    VEN_LABELS,
    LewidiItem,
    lewidi_annotator,
    parse_par_label,
    parse_ven_labels,
)
from capo.data.loaders import check_distribution
from capo.errors import DataError
from capo.evaluate.metrics import (
    lewidi_nli_perspectivist,
    lewidi_nli_soft,
    lewidi_paraphrase_perspectivist,
    lewidi_paraphrase_soft,
)
from capo.io import atomic_write_bytes, atomic_write_text, iter_jsonl, write_jsonl

# (item key, annotator) -> VEN label set / Par one-tuple (likert,); item key -> soft label dict.
AnnotatorPredictions = dict[tuple[str, str], tuple]
SoftPredictions = dict[str, dict]
Vote = Literal["value", "set", "label"]
SUBMISSION_NAMING = ("dataset", "short")


def _dataset_of(items: Sequence[LewidiItem]) -> str:
    if not items:
        raise DataError("no items")
    return items[0].dataset


# --- prediction files ------------------------------------------------------------------------------------------


def _row_id(row: dict, path: str | Path, line: int) -> tuple[str | int, dict]:
    """A prediction row's item key (a string or an integer, never a boolean) and its location for errors."""
    where = {"path": str(path), "line": line}
    key = row.get("id")
    if not isinstance(key, str | int) or isinstance(key, bool):
        raise DataError("missing or invalid id", field="id", **where)
    where["item"] = str(key)
    return key, where


def read_annotator_predictions(path: str | Path, dataset: str) -> AnnotatorPredictions:
    """A per-annotator prediction file, validated (labels in range, one row per (id, annotator))."""
    out: AnnotatorPredictions = {}
    for line, row in iter_jsonl(path):
        key, where = _row_id(row, path, line)
        annotator = lewidi_annotator(row.get("annotator"), where, "annotator")
        if dataset == "ven":
            if "labels" not in row:
                raise DataError("missing field (a list of labels, [] for none)", field="labels", **where)
            value = parse_ven_labels(row["labels"], where, "labels")
        else:
            if "label" not in row:
                raise DataError("missing field (a Likert integer -5..5)", field="label", **where)
            value = (parse_par_label(row["label"], where, "label", strings=False),)  # "5" is refused, as 2.5 is
        if (str(key), annotator) in out:
            raise DataError(f"a second prediction for {annotator}", field="annotator", **where)
        out[(str(key), annotator)] = value
    if not out:
        raise DataError("no predictions in file", path=str(path))
    return out


def write_annotator_predictions(path: str | Path, predictions: AnnotatorPredictions, dataset: str) -> None:
    if dataset == "ven":
        rows = ({"id": k, "annotator": a, "labels": list(v)} for (k, a), v in predictions.items())
    else:
        rows = ({"id": k, "annotator": a, "label": v[0]} for (k, a), v in predictions.items())
    write_jsonl(path, rows)


def _check_soft(value, dataset: str, where: dict) -> dict:
    keys = VEN_LABELS if dataset == "ven" else tuple(str(p) for p in PAR_LABELS)
    if not isinstance(value, dict) or set(value) != set(keys):
        raise DataError(f"expected an object with keys {', '.join(keys)}", field="soft_label", **where)
    if dataset == "par":  # a distribution (renormalised within rounding): EMD needs equal mass
        probs = check_distribution([value[k] for k in keys], len(keys), where, "soft_label")
        return dict(zip(PAR_LABELS, probs))
    for label in keys:
        p = value[label]
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p <= 1:
            raise DataError(f"expected a probability in [0, 1], got {p!r}", field=f"soft_label.{label}", **where)
    return {label: float(value[label]) for label in keys}


def read_soft_predictions(path: str | Path, dataset: str) -> SoftPredictions:
    out: SoftPredictions = {}
    for line, row in iter_jsonl(path):
        key, where = _row_id(row, path, line)
        if str(key) in out:
            raise DataError("duplicate id", field="id", **where)
        out[str(key)] = _check_soft(row.get("soft_label"), dataset, where)
    if not out:
        raise DataError("no soft labels in file", path=str(path))
    return out


def write_soft_predictions(path: str | Path, soft: SoftPredictions) -> None:
    write_jsonl(path, ({"id": k, "soft_label": {str(label): p for label, p in v.items()}} for k, v in soft.items()))


def check_complete(items: Sequence[LewidiItem], predictions: AnnotatorPredictions, path: str | Path) -> None:
    """Every (item, annotator) of the split predicted, nothing else: otherwise one error naming the first gap."""
    pairs = [(item.id, a) for item in items for a in item.annotators]
    missing = [pair for pair in pairs if pair not in predictions]
    if missing:
        key, annotator = missing[0]
        raise DataError(f"no prediction for annotator {annotator} (the first missing (item, annotator) pair; "
                        f"{len(missing)} of {len(pairs)} missing)", path=str(path), item=key)
    extra = next((pair for pair in predictions if pair not in set(pairs)), None)
    if extra is not None:
        known = {item.id for item in items}
        why = "annotator did not annotate this item" if extra[0] in known else "item is not in the split"
        raise DataError(f"prediction for {extra[1]}, but the {why} (predictions for another split?)",
                        path=str(path), item=extra[0])


def check_soft_complete(items: Sequence[LewidiItem], soft: SoftPredictions, path: str | Path) -> None:
    keys = [item.id for item in items]
    missing = [k for k in keys if k not in soft]
    if missing:
        raise DataError(f"no soft label (the first missing item; {len(missing)} of {len(keys)} missing)",
                        path=str(path), item=missing[0])
    extra = next((k for k in soft if k not in set(keys)), None)
    if extra is not None:
        raise DataError("soft label for an item that is not in the split (predictions for another split?)",
                        path=str(path), item=extra)


# --- aggregation and official rows -----------------------------------------------------------------------------


def aggregate_soft(items: Sequence[LewidiItem], predictions: AnnotatorPredictions) -> SoftPredictions:
    """Soft labels from per-annotator labels, as the organisers built the gold ones: VEN, per label the share of the
    item's annotators whose set holds it; Par, the share of annotators giving each point."""
    out: SoftPredictions = {}
    for item in items:
        given = [predictions[(item.id, a)] for a in item.annotators]
        if item.dataset == "ven":
            out[item.id] = {label: sum(label in g for g in given) / len(given) for label in VEN_LABELS}
        else:
            counts = Counter(g[0] for g in given)
            out[item.id] = {point: counts[point] / len(given) for point in PAR_LABELS}
    return out


def perspectivist_row(item: LewidiItem, labels_of) -> list:
    """The official nesting: VEN `[[0/1 per annotator] per label]`, Par `[label per annotator]`."""
    if item.dataset == "ven":
        return [[int(label in labels_of(a)) for a in item.annotators] for label in VEN_LABELS]
    return [labels_of(a)[0] for a in item.annotators]


def soft_row(item: LewidiItem, soft: dict) -> list:
    """The official nesting: VEN `[[1-p, p] per label]`, Par the 11 probabilities for -5..5."""
    if item.dataset == "ven":
        return [[1 - soft[label], soft[label]] for label in VEN_LABELS]
    return [soft[point] for point in PAR_LABELS]


# --- scores ----------------------------------------------------------------------------------------------------


def score(
    items: Sequence[LewidiItem],
    predictions: AnnotatorPredictions | None = None,
    soft: SoftPredictions | None = None,
    *,
    predictions_path: str | Path = "predictions",
    soft_path: str | Path = "soft labels",
) -> dict[str, float]:
    """The official scores of a labelled split: `perspectivist` from per-annotator predictions, `soft` from soft
    labels (aggregated from the per-annotator predictions when none are given)."""
    if not items or not all(item.labelled for item in items):
        raise DataError("the split has no labels: score against a labelled split (train, dev, or VEN test)")
    if predictions is None and soft is None:
        raise DataError("nothing to score: give per-annotator predictions, soft labels, or both")
    dataset = _dataset_of(items)
    report: dict[str, float] = {"n_items": len(items), "n_pairs": sum(len(i.annotators) for i in items)}
    if predictions is not None:
        check_complete(items, predictions, predictions_path)
        targets = [perspectivist_row(item, item.labels.__getitem__) for item in items]
        preds = [perspectivist_row(item, lambda a, k=item.id: predictions[(k, a)]) for item in items]
        metric = lewidi_nli_perspectivist if dataset == "ven" else lewidi_paraphrase_perspectivist
        report["perspectivist"] = metric(targets, preds)
        if soft is None:
            soft = aggregate_soft(items, predictions)
    if soft is not None:
        check_soft_complete(items, soft, soft_path)
        order = VEN_LABELS if dataset == "ven" else PAR_LABELS
        target = [[item.soft_label[label] for label in order] for item in items]
        pred = [[soft[item.id][label] for label in order] for item in items]
        report["soft"] = (lewidi_nli_soft if dataset == "ven" else lewidi_paraphrase_soft)(target, pred)
    return report


# --- baselines -------------------------------------------------------------------------------------------------


def _first_most_common(counts: Counter, order: Sequence):
    """The most frequent value; ties go to the first in `order` (so a baseline never depends on file order)."""
    best = max(counts.values())
    return next(value for value in order if counts.get(value) == best)


def annotator_constants(train_items: Iterable[LewidiItem], vote: Vote = "value") -> dict[str, tuple]:
    """Each annotator's most frequent train value, as the label (set) predicted for them on every item.

    Par: the annotator's most frequent Likert point (`vote` has no effect). VEN: `value` the most frequent 0/1
    entry of the annotator's label-presence vectors (the encoding the scorer compares), predicted for all three
    labels (0 for every VEN annotator: the empty set); `set` the most frequent label set; `label` each label the
    annotator gives on more than half of their items.
    """
    train_items = list(train_items)
    if not train_items or not all(item.labelled for item in train_items):
        raise DataError("the training split has no labels")
    dataset = _dataset_of(train_items)
    given: dict[str, list[tuple]] = {}
    for item in train_items:
        for annotator in item.annotators:
            given.setdefault(annotator, []).append(item.labels[annotator])
    out = {}
    for annotator, labels in sorted(given.items()):
        if dataset == "par":
            out[annotator] = (_first_most_common(Counter(g[0] for g in labels), PAR_LABELS),)
        elif vote == "set":
            order = sorted(set(labels), key=lambda s: (len(s), s))
            out[annotator] = _first_most_common(Counter(labels), order)
        elif vote == "label":
            out[annotator] = tuple(lab for lab in VEN_LABELS if sum(lab in g for g in labels) > len(labels) / 2)
        elif vote == "value":
            ones = sum(len(g) for g in labels)
            out[annotator] = VEN_LABELS if ones > len(labels) * len(VEN_LABELS) - ones else ()
        else:
            raise DataError(f"unknown vote {vote!r} (valid: value, set, label)", field="vote")
    return out


def most_frequent_predictions(
    train_items: Iterable[LewidiItem], items: Sequence[LewidiItem], vote: Vote = "value"
) -> AnnotatorPredictions:
    """Every (item, annotator) of `items` gets that annotator's constant from the training split."""
    constants = annotator_constants(train_items, vote)
    missing = next((a for item in items for a in item.annotators if a not in constants), None)
    if missing is not None:
        raise DataError(f"annotator {missing} has no training labels", field="annotator")
    return {(item.id, a): constants[a] for item in items for a in item.annotators}


def random_predictions(items: Sequence[LewidiItem], seed: int = 0) -> AnnotatorPredictions:
    """Uniform random labels (seeded): VEN one fair coin per (annotator, label) cell, Par a uniform Likert point,
    which is what the organisers' random baseline scores (0.5 and about 0.37 expected)."""
    rng = np.random.default_rng(seed)
    out: AnnotatorPredictions = {}
    for item in items:
        for annotator in item.annotators:
            if item.dataset == "ven":
                coins = rng.integers(0, 2, size=len(VEN_LABELS))
                out[(item.id, annotator)] = tuple(lab for lab, c in zip(VEN_LABELS, coins) if c)
            else:
                out[(item.id, annotator)] = (int(rng.integers(-5, 6)),)
    return out


# --- submission ------------------------------------------------------------------------------------------------


def submission_names(dataset: str, naming: str = "dataset") -> tuple[str, str]:
    """(soft file, perspectivist file) names; see the module docstring for where each spelling comes from."""
    if naming not in SUBMISSION_NAMING:
        raise DataError(f"unknown naming {naming!r} (valid: {', '.join(SUBMISSION_NAMING)})", field="naming")
    prefix = LEWIDI_DATASETS[dataset] if naming == "dataset" else dataset
    return f"{prefix}_test_soft.tsv", f"{prefix}_test_pe.tsv"


def _tsv(items: Sequence[LewidiItem], row) -> str:
    return "".join(f"{item.id}\t{json.dumps(row(item))}\n" for item in items)


def write_submission(
    output_dir: str | Path,
    items: Sequence[LewidiItem],
    predictions: AnnotatorPredictions,
    soft: SoftPredictions | None = None,
    *,
    naming: str = "dataset",
    zip_name: str | None = "res.zip",
    predictions_path: str | Path = "predictions",
    soft_path: str | Path = "soft labels",
) -> list[Path]:
    """Write one dataset's soft and perspectivist files into `output_dir` (items in split order) and, with
    `zip_name`, (re)write a flat zip of every submission file in that folder, so exporting VEN and Par into the same
    folder leaves one archive to upload. Nothing is written unless the predictions cover the split."""
    check_complete(items, predictions, predictions_path)
    if soft is None:
        soft = aggregate_soft(items, predictions)
    check_soft_complete(items, soft, soft_path)
    dataset = _dataset_of(items)
    soft_name, pe_name = submission_names(dataset, naming)
    output_dir = Path(output_dir)
    written = [output_dir / soft_name, output_dir / pe_name]
    atomic_write_text(written[0], _tsv(items, lambda item: soft_row(item, soft[item.id])))
    atomic_write_text(written[1], _tsv(items, lambda item: perspectivist_row(item, lambda a: predictions[(item.id, a)])))
    if zip_name:
        members = sorted(p for p in output_dir.glob("*_test_*.tsv") if p.name.endswith(("_test_soft.tsv", "_test_pe.tsv")))
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for member in members:
                archive.write(member, member.name)  # flat: Codabench reads the files at the archive root
        atomic_write_bytes(output_dir / zip_name, buffer.getvalue())
        written.append(output_dir / zip_name)
    return written


# --- script arguments (eval/lewidi.py; TrlParser dataclasses, YAML keys have the same names) -------------------


@dataclass
class PredictArguments:
    """`eval/lewidi.py predict`: predictions for every (item, annotator) of a split, from a baseline (--baseline) or
    an LLM (--model): each annotator's explainer (--explainers with {annotator}), one conditioned explainer
    (--explainers without {annotator}), or the base model alone (no --explainers)."""

    dataset: str = field(metadata={"help": "ven (VariErrNLI) or par (Paraphrase)"})
    output: str = field(metadata={"help": "per-annotator prediction JSONL to write"})
    split: str = field(default="dev", metadata={"help": "train, dev, test, or a LeWiDi JSON file (labels may be absent)"})
    baseline: str | None = field(default=None, metadata={"help": "most_frequent (the default without --model) or "
                                                                 "random"})
    vote: str = field(default="value", metadata={"help": "most_frequent on VEN: value (reproduces the published "
                                                         "baseline), set, or label; see capo/evaluate/lewidi.py"})
    seed: int = field(default=0, metadata={"help": "random baseline seed"})
    soft_output: str | None = field(default=None, metadata={"help": "also write the aggregated soft labels (JSONL; "
                                                                    "with --model default: beside --output, _soft)"})
    train_file: str | None = field(default=None, metadata={"help": "training split (default: the dataset's LeWiDi "
                                                                    "train file; nothing else is used)"})
    model: str | None = field(default=None, metadata={
        "help": "LLM predictor: base model (hub id or folder) that scores every label option after the explainer's "
                "prompt and 'Label:' (capo/evaluate/explainer_predictions.py)"})
    explainers: str | None = field(default=None, metadata={
        "help": "with --model: adapter folder template, {task} = nli or paraphrase, {annotator} = A1..A4 (LeWiDi "
                "Ann1..Ann4), e.g. runs/sft/{task}/{annotator}; without {annotator}: one conditioned adapter, "
                "each annotator's id in the prompt; omitted: the base model alone. Adapters that trained on the "
                "split's (or the decision split's) items are refused"})
    decision: str = field(default="dev", metadata={
        "help": "with --model: dev (fitted on --decision_split), a VEN threshold in (0, 1), or a Par rule: argmax, "
                "expectation (rounded), median"})
    decision_split: str = field(default="dev", metadata={
        "help": "labelled split the decision is fitted on (dev, or a LeWiDi JSON file); applied to --split"})
    soft_mean_output: str | None = field(default=None, metadata={
        "help": "with --model: soft labels as the mean of the annotators' probabilities (default: beside --output, "
                "_soft_mean)"})
    probs_output: str | None = field(default=None, metadata={
        "help": "with --model: per-(item, annotator) label probabilities, official label order (default: beside "
                "--output, _probs)"})
    dtype: str = field(default="float32", metadata={"help": "with --model: float32, bfloat16, float16 or auto"})
    batch_size: int = field(default=16, metadata={"help": "with --model: prompts per forward pass"})
    min_shared_tokens: int = field(default=16, metadata={
        "help": "with --model: shortest prompt prefix the scorer's KV cache shares (capo/generate/scoring.py); "
                "0: every prompt scored whole"})
    allow_unchecked_adapters: bool = field(default=False, metadata={
        "help": "with --explainers: use adapters without a run manifest (a hub adapter, a copied folder), whose "
                "training items cannot be checked against the split (refused otherwise); the report names them"})


@dataclass
class ScoreArguments:
    """`eval/lewidi.py score`: the official scores of prediction files against a labelled split."""

    dataset: str = field(metadata={"help": "ven or par"})
    split: str = field(default="dev", metadata={"help": "train, dev, test (VEN), or a labelled LeWiDi JSON file"})
    predictions: str | None = field(default=None, metadata={"help": "per-annotator prediction JSONL"})
    soft: str | None = field(default=None, metadata={"help": "soft-label JSONL (default: aggregated from --predictions)"})
    output: str | None = field(default=None, metadata={"help": "also write the scores as JSON"})


@dataclass
class ExportArguments:
    """`eval/lewidi.py export`: Codabench submission files (a soft and a perspectivist TSV) for one dataset."""

    dataset: str = field(metadata={"help": "ven or par"})
    predictions: str = field(metadata={"help": "per-annotator prediction JSONL covering the split"})
    output_dir: str = field(metadata={"help": "folder for the TSV files and the zip (export VEN and Par into the same one)"})
    split: str = field(default="test", metadata={"help": "the split the predictions are for (a `_test_clear` file works)"})
    soft: str | None = field(default=None, metadata={"help": "soft-label JSONL (default: aggregated from --predictions)"})
    naming: str = field(default="dataset", metadata={"help": "file names: dataset (VariErrNLI_test_soft.tsv) or "
                                                             "short (ven_test_soft.tsv)"})
    zip_name: str | None = field(default="res.zip", metadata={"help": "zip of every submission file in output_dir "
                                                                     "(empty: no zip)"})
