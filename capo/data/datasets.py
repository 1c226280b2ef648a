"""Which items a stage works on: a data set (shipped name or your own file), cut into train/dev/test.

`load_task_data` is what training reads (one task's data set, split item-disjointly); `load_splits` is the same for
any data set a later stage reads (nli341, ChaosNLI, a LeWiDi file, your own JSONL). A data set whose items carry a
predefined split (LeWiDi files) keeps it; any other one is split by item id with a seed (`capo.data.splits`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from capo.data.schema import Item, label_space
from capo.data.splits import SPLITS, Split, predefined_split, split_items
from capo.errors import DataError

# Which data set a task reads by default; LeWiDi files carry their own split, VariErr is split by seed.
DEFAULT_DATASET = {"nli": "varierr", "paraphrase": "lewidi-par"}
# Data sets made of several shipped files, one per predefined split (`lewidi-ven` = lewidi-ven-train/-dev/-test).
DATASET_TASK = {"varierr": "nli", "lewidi-ven": "nli", "lewidi-par": "paraphrase"}


@dataclass(frozen=True)
class TaskData:
    """The items of one data set, already cut into train/dev/test (a LeWiDi split may be empty)."""

    task: str | None  # None: a file that mixes tasks
    dataset: str
    split_seed: int
    splits: dict[str, list[Item]]

    def items(self, split: str) -> list[Item]:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r} (valid: {', '.join(SPLITS)})")
        return self.splits[split]

    def all_items(self) -> list[Item]:
        return [item for name in SPLITS for item in self.splits[name]]

    def split(self) -> Split:
        return Split(*(tuple(item.id for item in self.splits[name]) for name in SPLITS))

    def content_sha256(self) -> str:
        """A hash of every item's content and of the split it is in: equal hashes, equal training data."""
        from capo.data.formats.jsonl import item_to_json

        digest = hashlib.sha256()
        for name in SPLITS:
            for item in sorted(self.splits[name], key=lambda i: i.id):
                digest.update(json.dumps([name, item_to_json(item)], sort_keys=True, ensure_ascii=False).encode())
        return digest.hexdigest()


def _cut(items: list[Item], split_seed: int) -> dict[str, list[Item]]:
    has_own_split = bool(items) and all(item.meta.get("split") in SPLITS for item in items)
    cut = predefined_split(items) if has_own_split else split_items(items, seed=split_seed)
    return {name: cut.select(items, name) for name in SPLITS}


def load_splits(dataset: str, split_seed: int = 0) -> TaskData:
    """Any data set (a `DATASET_TASK` name, a shipped file name, or a path to your own JSONL / a LeWiDi file), cut
    exactly as training cuts it: VariErr and files without a split by `split_seed`, LeWiDi by its own files."""
    from capo.data.registry import DATASETS, load_items

    if dataset in DATASET_TASK:
        if dataset == "varierr":
            splits = _cut(load_items("varierr"), split_seed)
        else:  # keys repeat across LeWiDi files, so each file stays its own split
            splits = {name: load_items(f"{dataset}-{name}") if f"{dataset}-{name}" in DATASETS else []
                      for name in SPLITS}
        return TaskData(DATASET_TASK[dataset], dataset, split_seed, splits)
    items = load_items(dataset)
    if not items:
        raise DataError("the data set has no items", path=dataset)
    tasks = {item.task for item in items}
    return TaskData(tasks.pop() if len(tasks) == 1 else None, dataset, split_seed, _cut(items, split_seed))


def load_task_data(task: str, dataset: str | None = None, split_seed: int = 0) -> TaskData:
    """One task's training data set, split item-disjointly: VariErr with `split_seed` (the corpus LM is pre-trained
    on split seed 0's train items), LeWiDi by its predefined split files, your own JSONL by `split_seed`."""
    label_space(task)  # unknown task -> one-line error listing the valid ones
    dataset = dataset or DEFAULT_DATASET[task]
    if dataset not in DATASET_TASK and not Path(dataset).is_file():
        raise DataError(f"unknown dataset {dataset!r} (valid: {', '.join(DATASET_TASK)}, or a path to your own "
                        "JSONL)")
    data = load_splits(dataset, split_seed)
    if data.task != task:
        found = f"{data.task} items" if data.task else "items of several tasks"
        raise DataError(f"dataset {dataset!r} holds {found}, not {task}")
    return data
