"""LeWiDi 2025 prediction files for VariErrNLI (VEN) and Paraphrase (Par): reading, writing and checking them,
the organisers' aggregation of per-annotator labels into soft labels, and the official row nesting.

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
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from capo.data.formats.common import check_distribution
from capo.data.formats.lewidi import (
    PAR_LABELS,
    VEN_LABELS,
    LewidiItem,
    lewidi_annotator,
    parse_par_label,
    parse_ven_labels,
)
from capo.errors import DataError
from capo.io import iter_jsonl, write_jsonl

# (item key, annotator) -> VEN label set / Par one-tuple (likert,); item key -> soft label dict.
AnnotatorPredictions = dict[tuple[str, str], tuple]
SoftPredictions = dict[str, dict]


def dataset_of(items: Sequence[LewidiItem]) -> str:
    """The data set (ven or par) of a split's items; every item of a split file has the same."""
    if not items:
        raise DataError("no items")
    return items[0].dataset


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
    """A per-annotator prediction file, in the format `read_annotator_predictions` reads."""
    if dataset == "ven":
        rows = ({"id": k, "annotator": a, "labels": list(v)} for (k, a), v in predictions.items())
    else:
        rows = ({"id": k, "annotator": a, "label": v[0]} for (k, a), v in predictions.items())
    write_jsonl(path, rows)


def _check_soft(value, dataset: str, where: dict) -> dict:
    """One soft label checked: VEN one probability per label, Par a distribution over -5..5 (renormalised)."""
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
    """A soft-label file, validated (one row per id, each soft label of the data set's shape)."""
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
    """A soft-label file, in the format `read_soft_predictions` reads."""
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
    """Every item of the split has a soft label, nothing else: otherwise one error naming the first gap."""
    keys = [item.id for item in items]
    missing = [k for k in keys if k not in soft]
    if missing:
        raise DataError(f"no soft label (the first missing item; {len(missing)} of {len(keys)} missing)",
                        path=str(path), item=missing[0])
    extra = next((k for k in soft if k not in set(keys)), None)
    if extra is not None:
        raise DataError("soft label for an item that is not in the split (predictions for another split?)",
                        path=str(path), item=extra)


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
