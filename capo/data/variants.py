"""Study variants of a data set's training split: one seeded half of the training items (explainers train on one
half, a disjoint judge on the other), and pseudo-annotators (annotator ids permuted within each item), the control
whose explainers must be attributed at chance.

Both return a new `TaskData` (the original is untouched); its content hash differs from the original's, so an
adapter's run manifest says which variant it trained on.
"""

from __future__ import annotations

import dataclasses
import random

from capo.data.datasets import TaskData
from capo.data.schema import Item
from capo.errors import DataError

HALVES = (0, 1)


def half_ids(item_ids: list[str], half: int, seed: int) -> set[str]:
    """Half `half` (0 or 1) of `item_ids`, shuffled with `seed` independently of their order; half 0 takes the
    extra item of an odd count."""
    if half not in HALVES:
        raise DataError(f"unknown half {half!r} (valid: 0, 1)", field="train_half")
    ids = sorted(set(item_ids))
    random.Random(f"train-half-{seed}").shuffle(ids)
    cut = (len(ids) + 1) // 2
    return set(ids[:cut] if half == 0 else ids[cut:])


def train_half(data: TaskData, half: int, seed: int) -> TaskData:
    """`data` with its train split cut to one seeded half of its items (dev and test unchanged)."""
    keep = half_ids([item.id for item in data.items("train")], half, seed)
    splits = {**data.splits, "train": [item for item in data.items("train") if item.id in keep]}
    return dataclasses.replace(data, dataset=f"{data.dataset}[train half {half}, seed {seed}]", splits=splits)


def permute_annotators(item: Item, rng: random.Random) -> Item:
    """`item` with its annotators' ids permuted (each annotation and each validity vote relabelled consistently)."""
    present = item.annotators()
    shuffled = list(present)
    rng.shuffle(shuffled)
    rename = dict(zip(present, shuffled, strict=True))
    annotations = [dataclasses.replace(a, annotator=rename.get(a.annotator, a.annotator),
                                       votes={rename.get(v, v): ok for v, ok in a.votes.items()})
                   for a in item.annotations]
    return dataclasses.replace(item, annotations=annotations)


def pseudo_annotators(data: TaskData, seed: int) -> TaskData:
    """`data` with annotator ids permuted within every item (seeded per item id): pseudo-annotator A1 is a random
    real annotator on each item, so nothing annotator-specific is left to learn."""
    splits = {name: [permute_annotators(item, random.Random(f"pseudo-{seed}-{item.id}")) for item in items]
              for name, items in data.splits.items()}
    return dataclasses.replace(data, dataset=f"{data.dataset}[pseudo-annotators, seed {seed}]", splits=splits)


def study_variant(data: TaskData, half: int | None, pseudo_seed: int | None, seed: int) -> TaskData:
    """The training data of a study explainer: pseudo-annotators first (over all items), then the half."""
    if pseudo_seed is not None:
        data = pseudo_annotators(data, pseudo_seed)
    if half is not None:
        data = train_half(data, half, seed)
    return data
