"""Item-disjoint, seeded train/dev/test splits and per-annotator histories.

Splits are over item ids, so no item whose annotations are evaluated is ever part of a training history.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from capo.data.schema import Annotation, Item, check_annotator
from capo.data.validity import Predicate, always
from capo.errors import DataError

SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class Split:
    train: tuple[str, ...]
    dev: tuple[str, ...]
    test: tuple[str, ...]

    def of(self, name: str) -> tuple[str, ...]:
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r} (valid: {', '.join(SPLITS)})")
        return getattr(self, name)

    def select(self, items: Sequence[Item], name: str) -> list[Item]:
        wanted = set(self.of(name))
        return [item for item in items if item.id in wanted]


def split_items(items: Sequence[Item], fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0) -> Split:
    """Shuffle item ids with `seed` (independently of input order) and cut them by `fractions`."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise DataError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    ids = sorted({item.id for item in items})
    if len(ids) != len(items):
        raise DataError("item ids are not unique: split by (split, id) for LeWiDi files, or deduplicate")
    random.Random(seed).shuffle(ids)
    n_train = round(fractions[0] * len(ids))
    n_dev = round(fractions[1] * len(ids))
    return Split(tuple(ids[:n_train]), tuple(ids[n_train : n_train + n_dev]), tuple(ids[n_train + n_dev :]))


def predefined_split(items: Sequence[Item]) -> Split:
    """The split recorded by the source (LeWiDi files carry `meta["split"]`)."""
    groups: dict[str, list[str]] = {name: [] for name in SPLITS}
    for item in items:
        name = item.meta.get("split")
        if name not in groups:
            raise DataError(f"no predefined split {name!r} (valid: {', '.join(SPLITS)})", item=item.id, field="split")
        groups[name].append(item.id)
    return Split(*(tuple(groups[name]) for name in SPLITS))


def history(
    items: Sequence[Item], annotator: str, ids: Sequence[str] | None = None, valid: Predicate = always
) -> list[tuple[Item, Annotation]]:
    """The annotator's (item, annotation) pairs on the given items (all if `ids` is None) that pass `valid`."""
    check_annotator(annotator)
    wanted = None if ids is None else set(ids)
    return [
        (item, annotation)
        for item in items
        if wanted is None or item.id in wanted
        for annotation in item.by_annotator(annotator)
        if valid(item, annotation)
    ]


def few_shot_rng(seed: int, *keys: str) -> random.Random:
    """Few-shot examples draw from their own generator, so turning them on changes no other sampled choice; `keys`
    (e.g. target and item) give each draw a generator of its own."""
    return random.Random(":".join(["few-shot", str(seed), *keys]))


def few_shot_examples(
    train_history: Sequence[tuple[Item, Annotation]], item: Item, k: int, rng: random.Random
) -> list[tuple[Item, Annotation]]:
    """k worked examples sampled from an annotator's training history; never the item's own answer."""
    if k <= 0:
        return []
    pool = [(i, a) for i, a in train_history if i.id != item.id]
    return rng.sample(pool, min(k, len(pool)))
