"""LeWiDi 2025 split files (VariErrNLI, Paraphrase): the one parser of their records, with the two views the rest
needs.

- `read_lewidi`: the file as the shared task sees it — LeWiDi keys and annotator names (`Ann1..Ann4`), the distinct
  annotators of each item in `annotations` key order (the order the official scorer builds its targets in), labels
  only where the file has them (`LewidiItem`): what predictions, scores and submission files use (`capo.lewidi`).
- `load_lewidi`: a labelled file as capo's `Item`s — VariErr ids for VEN items, canonical `A1..A4`, one `Annotation`
  per explanation slot — what training, generation and the behaviour study use.
One annotator converter (`lewidi_annotator` / `capo_annotator`: `Ann2` is `A2`) and one task map (`LEWIDI_TASK`).
Field meanings: `data/lewidi2025/README.md`.

A label-less file is any file whose `annotations` values are all `""` (the `_test_clear` form, e.g.
AadiSanghani/LeWidi `dataset/VariErrNLI/VariErrNLI_test_clear.json`) or whose `annotations` is `{}`/absent (then
the annotators come from the `annotators` string); its `soft_label` is ignored. A file labelled for some items or
annotators only is an error: partial gold would be scored silently wrong.

(The parser lives in `capo.data` rather than `capo.lewidi`: the data registry, and so training on LeWiDi's splits,
reads these files, and the data layer imports no later one.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from capo.data.formats.common import (
    LEWIDI_DIR,
    SUM_TOLERANCE,
    check_distribution,
    check_explanation,
    nli_item_id,
)
from capo.data.schema import LIKERT, NLI, TASK_INPUTS, Annotation, Item, label_space
from capo.errors import DataError
from capo.io import read_json

# Short names (as in the task's overview paper) -> the organisers' file prefix.
LEWIDI_DATASETS: dict[str, str] = {"ven": "VariErrNLI", "par": "Paraphrase"}
LEWIDI_TASK: dict[str, str] = {"ven": "nli", "par": "paraphrase"}  # the one task map: data set -> capo task
_TASKS = {"natural language inference": "ven", "paraphrase detection": "par"}  # the files' `annotation task`
_TEXT_FIELDS = {"ven": ("context", "statement"), "par": ("Question1", "Question2")}
LEWIDI_ANNOTATORS: tuple[str, ...] = ("Ann1", "Ann2", "Ann3", "Ann4")
# Label order of the official VEN targets and submission rows (the `soft_label` key order), not capo's [E, N, C].
VEN_LABELS: tuple[str, ...] = ("contradiction", "entailment", "neutral")
PAR_LABELS: tuple[int, ...] = tuple(range(-5, 6))


@dataclass(frozen=True)
class LewidiItem:
    """One item of a LeWiDi split file.

    `labels[a]`: VEN, the annotator's label set (sorted, one or more of VEN_LABELS); Par, a one-tuple of the Likert
    integer. `soft_label`: VEN, label -> share of annotators whose set holds it (as rounded in the file); Par, the 11
    probabilities for -5..5. Both are None for a label-less file.
    """

    id: str
    dataset: str
    inputs: tuple[str, str]
    annotators: tuple[str, ...]
    labels: dict[str, tuple] | None = None
    soft_label: dict | None = None

    @property
    def labelled(self) -> bool:
        return self.labels is not None


def lewidi_annotator(name, where: dict | None = None, field: str = "annotator") -> str:
    """`Ann1`..`Ann4`; capo's canonical `A1`..`A4` are accepted for the same people."""
    text = str(name).strip()
    if text.startswith("A") and not text.startswith("Ann"):
        text = "Ann" + text[1:]
    if text not in LEWIDI_ANNOTATORS:
        raise DataError(f"unknown annotator {name!r} (valid: {', '.join(LEWIDI_ANNOTATORS)} or A1-A4)", field=field,
                        **(where or {}))
    return text


def capo_annotator(name, where: dict | None = None, field: str = "annotator") -> str:
    """LeWiDi `Ann2` -> capo `A2` (capo ids pass through): the same converter, capo's spelling."""
    return "A" + lewidi_annotator(name, where, field)[3:]


def lewidi_split_path(dataset: str, split: str, data_dir: str | Path = LEWIDI_DIR) -> Path:
    """A split name (train/dev/test) -> the vendored file; anything else is taken as a path."""
    if split in ("train", "dev", "test"):
        prefix = LEWIDI_DATASETS[check_dataset(dataset)]
        return Path(data_dir) / prefix / f"{prefix}_{split}.json"
    return Path(split)


def check_dataset(dataset: str) -> str:
    if dataset not in LEWIDI_DATASETS:
        raise DataError(f"unknown LeWiDi dataset {dataset!r} (valid: {', '.join(LEWIDI_DATASETS)})", field="dataset")
    return dataset


def parse_ven_labels(value, where: dict, field: str) -> tuple[str, ...]:
    """`"contradiction,neutral"` (or a list) -> a sorted, duplicate-free label set; short forms e/n/c accepted."""
    parts = value.split(",") if isinstance(value, str) else value
    if not isinstance(parts, list | tuple) or not all(isinstance(p, str) for p in parts):
        raise DataError("expected a comma-separated label string or a list of labels", field=field, **where)
    out = set()
    for part in parts:
        try:
            out.add(NLI.normalise(part))
        except ValueError as err:
            raise DataError(str(err), field=field, **where) from None
    return tuple(sorted(out))


def parse_par_label(value, where: dict, field: str, *, strings: bool = True) -> int:
    """A Likert point -5..5, as an int or (with `strings`: the LeWiDi split files spell them so) its string spelling
    ("3", "+3")."""
    if isinstance(value, bool) or not isinstance(value, int | str) or (isinstance(value, str) and not strings):
        raise DataError(f"expected an integer from -5 to 5, got {value!r}", field=field, **where)
    try:
        return int(LIKERT.normalise(value))
    except ValueError:
        raise DataError(f"expected an integer from -5 to 5, got {value!r}", field=field, **where) from None


def _blank(value) -> bool:
    return value is None or value == ""


@dataclass(frozen=True)
class _Record:
    """One validated record of a split file, before either view: `slots` are the `annotators` string's entries (one
    per explanation, an annotator repeated once per label), `annotators` the distinct ones in target order."""

    key: str
    dataset: str
    inputs: tuple[str, str]
    slots: tuple[str, ...]
    annotators: tuple[str, ...]
    labels: dict[str, tuple] | None
    soft_label: dict | None
    row: dict
    where: dict


def _records(path: str | Path, dataset: str | None = None, *, soft_required: bool = True,
             soft_tolerance: float = 1e-6) -> list[_Record]:
    """The one parser: every record of a VEN or Par split file, labelled or not, in file order. `dataset` (ven/par),
    when given, must match the file's `annotation task`; a labelled record needs its `soft_label` (the official
    soft targets) unless `soft_required` is false."""
    path = str(path)
    data = read_json(path)
    if not isinstance(data, dict) or not data:
        raise DataError("expected a non-empty JSON object mapping item ids to records", path=path)
    records, first = [], None
    for key, row in data.items():
        where = {"path": path, "item": str(key)}
        if not isinstance(row, dict):
            raise DataError("expected an object", **where)
        task = row.get("annotation task")
        if task not in _TASKS:
            raise DataError(f"unknown task {task!r} (valid: {', '.join(_TASKS)})", field="annotation task", **where)
        found = _TASKS[task]
        if dataset is not None and found != dataset:
            raise DataError(f"a {LEWIDI_DATASETS[found]} file, not {LEWIDI_DATASETS[dataset]}", field="annotation task", **where)
        dataset = found
        text = row.get("text")
        fields = _TEXT_FIELDS[found]
        if not isinstance(text, dict) or not all(isinstance(text.get(f), str) for f in fields):
            raise DataError(f"expected text fields {', '.join(fields)}", field="text", **where)
        names_field = row.get("annotators")
        if not isinstance(names_field, str):
            raise DataError("expected a comma-separated string", field="annotators", **where)
        slots = tuple(lewidi_annotator(n, where, "annotators") for n in names_field.split(",") if n.strip())
        distinct = tuple(dict.fromkeys(slots))
        annotations = row.get("annotations") or {}
        if not isinstance(annotations, dict):
            raise DataError("expected an object {annotator: label}", field="annotations", **where)
        keys = tuple(lewidi_annotator(n, where, "annotations") for n in annotations)
        if keys and set(keys) != set(distinct):
            raise DataError(f"annotators {', '.join(keys)} in 'annotations' but {', '.join(distinct)} in 'annotators'",
                            field="annotations", **where)
        annotators = keys or distinct  # the official targets follow the `annotations` key order
        if not annotators:
            raise DataError("no annotators", field="annotators", **where)
        blank = [k for k, v in zip(keys, annotations.values()) if _blank(v)]
        if blank and len(blank) != len(keys):
            raise DataError(f"labels blank for {', '.join(blank)} only: a split is either labelled or label-less",
                            field="annotations", **where)
        labelled = bool(keys) and not blank
        if first is None:
            first = (str(key), labelled)
        elif labelled != first[1]:
            state = {True: "labelled", False: "label-less"}
            raise DataError(f"{state[labelled]}, but item {first[0]} is {state[first[1]]}: a split is either "
                            "labelled or label-less", field="annotations", **where)
        labels = soft = None
        if labelled:
            if found == "ven":
                labels = {k: parse_ven_labels(v, where, f"annotations.{raw}")
                          for k, raw, v in zip(keys, annotations, annotations.values())}
            else:
                labels = {k: (parse_par_label(v, where, f"annotations.{raw}"),)
                          for k, raw, v in zip(keys, annotations, annotations.values())}
            if soft_required or row.get("soft_label") is not None:
                soft = _soft_label(row.get("soft_label"), found, where, soft_tolerance)
        records.append(_Record(str(key), found, (text[fields[0]], text[fields[1]]), slots, annotators, labels, soft,
                               row, where))
    return records


def read_lewidi(path: str | Path, dataset: str | None = None) -> list[LewidiItem]:
    """The shared task's view: every item of a VEN or Par split file, labelled or not, in file order (`dataset`,
    when given, must match the file)."""
    return [LewidiItem(id=r.key, dataset=r.dataset, inputs=r.inputs, annotators=r.annotators, labels=r.labels,
                       soft_label=r.soft_label) for r in _records(path, dataset)]


def load_lewidi(path: str | Path) -> list[Item]:
    """capo's view of a labelled split file: `Item`s with one `Annotation` per explanation.

    VariErrNLI: explanation i belongs to annotator i of the expanded `annotators` string, and to that annotator's
    k-th label in their alphabetically sorted label set. Paraphrase: one Likert label and explanation per Ann1..Ann4.
    LeWiDi keys repeat across splits for different items, so `meta["split"]` is part of an item's identity.
    """
    items = []
    # Training needs labels and explanations, not soft targets: a missing or rounded soft label is no error here.
    for record in _records(path, soft_required=False, soft_tolerance=SUM_TOLERANCE):
        where, row = record.where, record.row
        if record.labels is None:
            raise DataError("no labels: a label-less split has nothing to train or evaluate on", field="annotations",
                            **where)
        task = LEWIDI_TASK[record.dataset]
        space = label_space(task)
        other = row.get("other_info")
        explanations = other.get("explanations") if isinstance(other, dict) else None
        if not isinstance(explanations, list):
            raise DataError("missing or not a list", field="other_info.explanations", **where)
        if len(explanations) != len(record.slots):
            raise DataError(f"{len(explanations)} explanations for {len(record.slots)} annotator slots",
                            field="other_info.explanations", **where)
        seen: dict[str, int] = {}
        annotations = []
        for slot, (name, text) in enumerate(zip(record.slots, explanations)):
            label_set = record.labels[name]
            k = seen.get(name, 0)
            seen[name] = k + 1
            if k >= len(label_set):
                raise DataError(f"{name} has more explanation slots than labels", field="annotators", **where)
            annotations.append(Annotation(annotator=capo_annotator(name, where, "annotators"),
                                          label=space.normalise(str(label_set[k])),
                                          explanation=check_explanation(text, where, f"other_info.explanations[{slot}]")))
        inputs = dict(zip(TASK_INPUTS[task], record.inputs))
        meta = {"split": row.get("split"), "source": f"lewidi2025-{task}"}
        distributions = {}
        if record.soft_label is not None and task == "paraphrase":
            distributions["lewidi_soft"] = check_distribution([record.soft_label[p] for p in PAR_LABELS], len(space),
                                                              where, "soft_label")
        elif record.soft_label is not None:  # one Bernoulli per label (annotators may give several): not a distribution
            meta["label_presence"] = [record.soft_label[label] for label in space.labels]
        item_id = record.key
        if task == "nli":
            # The VariErr id (MNLI pairID), as everywhere else: LeWiDi keys drop its letter and repeat across splits.
            meta["lewidi_id"] = record.key
            item_id = nli_item_id(inputs["premise"], inputs["hypothesis"])
        items.append(Item(id=str(item_id), task=task, inputs=inputs, annotations=annotations,
                          distributions=distributions, meta=meta))
    return items


def load_lewidi_annotators_meta(path: str | Path) -> dict[str, dict]:
    """The `*_annotators_meta.json` files (not strict JSON: trailing commas), keyed by canonical annotator id."""
    raw = read_json(path, allow_trailing_commas=True)
    if not isinstance(raw, dict):
        raise DataError("expected a JSON object of annotators", path=str(path))
    return {capo_annotator(name, {"path": str(path)}, name): info for name, info in raw.items()}


def capo_item(item: LewidiItem) -> Item:
    """A LeWiDi item as the explainers' prompts and training records know it: VEN under its VariErr id (the id the
    adapters' run manifests record), Par under its LeWiDi key; no annotations (the split may be label-less)."""
    task = LEWIDI_TASK[item.dataset]
    inputs = dict(zip(TASK_INPUTS[task], item.inputs))
    item_id = nli_item_id(*item.inputs) if task == "nli" else item.id
    return Item(id=item_id, task=task, inputs=inputs, meta={"lewidi_id": item.id})


def _soft_label(soft, dataset: str, where: dict, tolerance: float = 1e-6) -> dict:
    """The file's soft label, read as the official scorer reads it (VEN: the "1" entry of each label)."""
    try:
        if dataset == "ven":
            return {label: float(soft[label]["1"]) for label in VEN_LABELS}
        values = {point: float(soft[str(point)]) for point in PAR_LABELS}
    except (KeyError, TypeError, ValueError):
        shape = "{label: {'0': q, '1': p}} for each label" if dataset == "ven" else "a probability for each of -5..5"
        raise DataError(f"expected {shape}", field="soft_label", **where) from None
    if abs(sum(values.values()) - 1) > tolerance:
        raise DataError(f"sums to {sum(values.values()):.6g}, not 1", field="soft_label", **where)
    return values
