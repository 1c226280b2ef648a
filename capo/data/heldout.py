"""Held-out guarantees: what an adapter trained on, read from its run manifest, and held-out selection that follows it.

Every adapter trained by `capo.train.explainers` records a `training_data` block in its `run_manifest.json`: data set,
content hash, task, split seed, annotator, the ids of every train/dev/test item of its split, and the ids of the items
it trained on (row items and few-shot examples, plus those of the adapter it started from). Item ids are shared
across data sets (nli341, ChaosNLI and the LeWiDi VariErrNLI files carry VariErr ids), so a held-out set is chosen by
id: an item's split is the one it has in every adapter's training data, and its own data set's split only for ids
that data never contained. `check_heldout` is the one check generation and attribution both run before any work.

The check fails closed: an adapter without a run manifest (a hub adapter, a folder copied without it) cannot be
checked, so it is refused (`unchecked_adapters`) unless the user passes `--allow_unchecked_adapters true`; then it is
used, said in one line, and the tool's output records it as unverified.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from capo.data.datasets import TaskData
from capo.data.schema import Item
from capo.data.splits import SPLITS
from capo.errors import DataError
from capo.io import read_json

MANIFEST = "run_manifest.json"
RECORD = "training_data"
ALLOW_UNCHECKED = "--allow_unchecked_adapters true"  # the flag every adapter-taking tool offers for such adapters


def training_record(
    data: TaskData,
    annotator: str,
    item_ids: Iterable[str],
    context_ids: Iterable[str] = (),
    init_adapter: tuple[str, dict] | None = None,
) -> dict:
    """The manifest block of an adapter trained on `item_ids` of `data` (`context_ids`: items shown as examples).

    `init_adapter` = (path, its manifest) for a run that starts from another adapter, whose record is kept inside.
    """
    record = {
        "dataset": data.dataset,
        "dataset_sha256": data.content_sha256(),
        "task": data.task,
        "split_seed": data.split_seed,
        "annotator": annotator,
        "item_ids": sorted(set(item_ids)),
        "context_item_ids": sorted(set(context_ids)),
        "splits": {name: sorted(item.id for item in data.splits[name]) for name in SPLITS},
    }
    if init_adapter is not None:
        path, manifest = init_adapter
        record["init_adapter"] = {"path": str(path), **_record(manifest, path)}
    return record


def read_manifest(adapter: str | Path) -> dict | None:
    """An adapter folder's run manifest; None when there is none (a hub id, or an adapter capo did not train)."""
    path = Path(adapter) / MANIFEST
    return read_json(path) if path.is_file() else None


def _record(manifest: dict, where: str | Path | None = None) -> dict:
    record = manifest.get(RECORD)
    if not isinstance(record, dict) or not isinstance(record.get("item_ids"), list):
        raise DataError("the run manifest does not record the adapter's training items (retrain it with "
                        "recipes/sft.py or recipes/capo.py)", path=str(where) if where else None, field=RECORD)
    return record


def _chain(manifest: dict, where: str | Path | None = None) -> list[dict]:
    """The manifest's training record and those of the adapters it started from."""
    records = [_record(manifest, where)]
    while isinstance(records[-1].get("init_adapter"), dict):
        records.append(records[-1]["init_adapter"])
    return records


def training_items(manifest: dict) -> set[str]:
    """Ids of every item the adapter of `manifest` trained on (directly, as a few-shot example, or inherited)."""
    return {i for record in _chain(manifest) for key in ("item_ids", "context_item_ids") for i in record.get(key, ())}


def _manifests(adapters: Mapping[str, str | Path]) -> dict[str, dict | None]:
    return {name: read_manifest(path) for name, path in adapters.items()}


def select_heldout(data: TaskData, split: str | None, adapters: Mapping[str, str | Path] | None = None) -> list[Item]:
    """The items of `data` in `split` (None = all), where an item's split is the one its id has in the training data
    of every adapter (name -> folder) that has a run manifest, and `data`'s own split for ids new to all of them."""
    if split is None:
        return data.all_items()
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} (valid: {', '.join(SPLITS)})", field="split")
    adapters = adapters or {}
    cuts = [{i: name for name, ids in record["splits"].items() for i in ids}
            for path, manifest in zip(adapters.values(), _manifests(adapters).values(), strict=True)
            if manifest is not None for record in _chain(manifest, path)]
    own = {item.id: name for name in SPLITS for item in data.splits[name]}
    names = lambda i: [cut.get(i, own[i]) for cut in cuts] or [own[i]]
    return [item for item in data.all_items() if all(name == split for name in names(item.id))]


def _unchecked(adapters: Mapping[str, str | Path], manifests: Mapping[str, dict | None], allow: bool,
               log: Callable[[str], None]) -> dict[str, str]:
    missing = {name: str(path) for name, path in adapters.items() if manifests[name] is None}
    if missing and not allow:
        name, path = next(iter(missing.items()))
        more = f" ({len(missing) - 1} more adapter(s) lack one too)" if len(missing) > 1 else ""
        raise DataError(f"adapter {name} has no run manifest ({MANIFEST}), so which items it trained on is unknown "
                        f"and held-out items cannot be checked{more}: use an adapter trained by recipes/sft.py or "
                        f"recipes/capo.py, or pass {ALLOW_UNCHECKED} to use it unverified", path=path)
    for name, path in missing.items():
        log(f"adapter {name} ({path}) has no run manifest: which items it trained on is unknown, not checked "
            "(--allow_unchecked_adapters)")
    return missing


def unchecked_adapters(adapters: Mapping[str, str | Path], allow: bool = False,
                       log: Callable[[str], None] = print) -> dict[str, str]:
    """The adapters (name -> folder or hub id) without a run manifest, whose training items are unknown. Refused in
    one line naming the first (call this before any model loads) unless `allow` (`--allow_unchecked_adapters
    true`); then each is said in one line and the name -> path map returned, for the tool's output to record."""
    return _unchecked(adapters, _manifests(adapters), allow, log)


def check_heldout(items: Sequence[Item], adapters: Mapping[str, str | Path], log: Callable[[str], None] = print, *,
                  allow_unchecked: bool = False) -> dict[str, str]:
    """Refuse (one-line DataError naming the adapter and the count) items any adapter trained on. An adapter without
    a run manifest cannot be checked: it is refused (`unchecked_adapters`) unless `allow_unchecked`, when it is said
    in one line and skipped. Returns the unchecked adapters (name -> path; empty when every one was checked)."""
    manifests = _manifests(adapters)
    unchecked = _unchecked(adapters, manifests, allow_unchecked, log)
    ids = {item.id for item in items}
    for (name, path), manifest in zip(adapters.items(), manifests.values(), strict=True):
        if manifest is None:
            continue
        seen = ids & training_items(manifest)
        if seen:
            record = _record(manifest, path)
            raise DataError(f"adapter {name} ({path}) trained on {len(seen)} of these {len(ids)} items (it trained on "
                            f"{record['dataset']} split seed {record['split_seed']}; pick its dev or test items)")
    return unchecked


def leave_out_pretrained(items: Sequence[Item], pretrained: set[str], exclude: bool,
                         log: Callable[[str], None] = print) -> list[Item]:
    """Say how many of `items` the base model was pre-trained on (`capo.models.corpus_lm.pretraining_item_ids`), and
    with `exclude` leave them out."""
    seen = [item for item in items if item.id in pretrained]
    if not seen:
        return list(items)
    if not exclude:
        log(f"{len(seen)} of {len(items)} items are in the base model's pre-training corpus "
            "(--exclude_pretrained true leaves them out)")
        return list(items)
    log(f"leaving out {len(seen)} of {len(items)} items the base model was pre-trained on")
    kept = [item for item in items if item.id not in pretrained]
    if not kept:
        raise DataError("no items left: the base model was pre-trained on all of them")
    return kept
