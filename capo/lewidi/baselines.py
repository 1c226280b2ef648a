"""The organisers' two LeWiDi 2025 reference baselines: `most_frequent_predictions` (each annotator's most frequent
train value) and `random_predictions`.

The published most-frequent VEN test score, 0.345, is reproduced by `vote="value"` (the most frequent 0/1 value of
each annotator's train label-presence vectors, which is 0: the empty label set); each annotator's most frequent
label set scores 0.355 and a per-label majority 0.341 (see docs/results.md).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np

from capo.data.formats.lewidi import PAR_LABELS, VEN_LABELS, LewidiItem
from capo.errors import DataError
from capo.lewidi.predictions import AnnotatorPredictions, dataset_of

Vote = Literal["value", "set", "label"]


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
    dataset = dataset_of(train_items)
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
