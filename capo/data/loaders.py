"""Loaders: every supported source file becomes a list of `capo.data.schema.Item`.

Sources: VariErr NLI (JSONL), LeWiDi 2025 VariErrNLI / Paraphrase (+ annotator meta files with trailing
commas), the MJD papers' 341-item `NLI_explanations.json`, ChaosNLI dev/test, the released LLM
model-explanation files, and capo's own bring-your-own JSONL format (see `load_items_jsonl`).

NLI items that are VariErr items keep their VariErr id (the MNLI pairID, e.g. "23751e") whatever file they come
from, so distributions from different files join on `id`. Other items get a stable content id (`text_id`).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Container, Mapping, Sequence
from functools import lru_cache
from pathlib import Path

from capo.data.schema import ANNOTATORS, NLI, TASK_INPUTS, Annotation, Item, label_space
from capo.errors import DataError
from capo.io import iter_jsonl, read_json, write_jsonl

DATA_DIR = Path(os.environ.get("CAPO_DATA_DIR", Path(__file__).resolve().parents[2] / "data"))
VARIERR_PATH = DATA_DIR / "varierr" / "varierr.json"
NLI341_PATH = DATA_DIR / "mjd" / "NLI_explanations.json"
CHAOS_DIR = DATA_DIR / "mjd" / "chaos_dev_test"
MODEL_EXPLANATIONS_DIR = DATA_DIR / "mjd" / "model_explanations"
LEWIDI_DIR = DATA_DIR / "lewidi2025"
SUM_TOLERANCE = 5e-3  # distributions may be rounded to 2 decimals in source files


def _norm_text(text: str) -> str:
    return " ".join(text.split())


def text_id(*inputs: str) -> str:
    """Stable id for an item that has none: a hash of its whitespace-normalised input texts."""
    digest = hashlib.sha1("\n".join(_norm_text(t) for t in inputs).encode("utf-8")).hexdigest()
    return f"t{digest[:12]}"


@lru_cache(maxsize=4)
def _varierr_ids(path: str) -> dict[tuple[str, str], str]:
    if not Path(path).exists():
        return {}
    return {
        (_norm_text(row["context"]), _norm_text(row["statement"])): row["id"] for _, row in iter_jsonl(path)
    }


def nli_item_id(premise: str, hypothesis: str, varierr_path: str | Path = VARIERR_PATH) -> str:
    """The VariErr id of a premise/hypothesis pair when it is a VariErr item, else its content id."""
    found = _varierr_ids(str(varierr_path)).get((_norm_text(premise), _norm_text(hypothesis)))
    return found or text_id(premise, hypothesis)


def _require(row: dict, key: str, kind: type | tuple, where: dict):
    if key not in row:
        raise DataError("missing field", field=key, **where)
    value = row[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int to isinstance: a JSON `true` id would silently become the item "True"
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(f"expected {names}, got {type(value).__name__}", field=key, **where)
    return value


def _optional(row: dict, key: str, kind: type, where: dict, default):
    """A field that may be absent (or null); when present it must have the right type."""
    if row.get(key) is None:
        return default
    return _require(row, key, kind, where)


def _explanation(text, where: dict, field: str) -> str:
    if not isinstance(text, str):
        raise DataError(f"expected a string explanation, got {type(text).__name__}", field=field, **where)
    if not text.strip():
        raise DataError("empty explanation", field=field, **where)
    return text.strip()


def _label(space, label, where: dict, field: str) -> str:
    try:
        return space.normalise(label)
    except ValueError as err:
        raise DataError(str(err), field=field, **where) from None


def check_distribution(values, n_labels: int, where: dict, field: str) -> list[float]:
    """A probability vector of the right length, non-negative, summing to 1 (within rounding)."""
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise DataError("expected a list of numbers", field=field, **where)
    if len(values) != n_labels:
        raise DataError(f"expected {n_labels} values, got {len(values)}", field=field, **where)
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise DataError("values must be finite and non-negative", field=field, **where)
    total = sum(values)
    if abs(total - 1.0) > SUM_TOLERANCE:
        raise DataError(f"distribution sums to {total:.6g}, not 1", field=field, **where)
    return [v / total for v in values]


# --- distribution files (one {"id", "distribution"} per line: HJDs, MJDs, predictions) --------------------------


def row_id(row: Mapping, where: dict, seen: Container[str] = ()) -> str:
    """A JSONL row's id as a string: present, a string or an integer (never a boolean), not one of `seen`; a row
    without one is an error, never silently dropped. `where`: its path and line."""
    item_id = row.get("id")
    if not isinstance(item_id, (str, int)) or isinstance(item_id, bool):
        raise DataError("missing or invalid id", field="id", **where)
    if str(item_id) in seen:
        raise DataError("duplicate id", field="id", item=str(item_id), **where)
    return str(item_id)


def read_distributions(path: str | Path, n_labels: int = 3) -> dict[str, list[float]]:
    """id -> distribution, validated (right length, non-negative, sums to 1, unique ids)."""
    out: dict[str, list[float]] = {}
    for line, row in iter_jsonl(path):
        where = {"path": str(path), "line": line}
        item_id = row_id(row, where, out)
        out[item_id] = check_distribution(row.get("distribution"), n_labels, {**where, "item": item_id}, "distribution")
    if not out:
        raise DataError("no distributions in file", path=str(path))
    return out


def write_distributions(
    path: str | Path, distributions: Mapping[str, Sequence[float]], extra: Mapping[str, dict] | None = None
) -> None:
    extra = extra or {}
    write_jsonl(
        path, ({"id": i, "distribution": [float(x) for x in d], **extra.get(i, {})} for i, d in distributions.items())
    )


def _normalise_counts(counts: list[float]) -> list[float]:
    total = sum(counts)
    return [c / total for c in counts] if total else [0.0] * len(counts)


# --- VariErr ---------------------------------------------------------------------------------------------------


def load_varierr(path: str | Path = VARIERR_PATH) -> list[Item]:
    """VariErr NLI JSONL: round-1 label-explanation pairs with round-2 validity votes. Annotator k -> `A{k+1}`."""
    items = []
    for line, row in iter_jsonl(path):
        where = {"path": str(path), "line": line}
        item_id = _require(row, "id", str, where)
        where["item"] = item_id
        premise = _require(row, "context", str, where)
        hypothesis = _require(row, "statement", str, where)
        annotations = []
        for label in NLI.labels:
            for k, entry in enumerate(_require(row, label, list, where)):
                field = f"{label}[{k}]"
                if not isinstance(entry, dict):
                    raise DataError("expected an object", field=field, **where)
                author = _annotator_from_index(entry.get("annotator"), where, f"{field}.annotator")
                votes = {}
                for j, vote in enumerate(_optional(entry, "judgments", list, where, [])):
                    if not isinstance(vote, dict):
                        raise DataError("expected an object", field=f"{field}.judgments[{j}]", **where)
                    voter = _annotator_from_index(vote.get("annotator"), where, f"{field}.judgments[{j}].annotator")
                    if not isinstance(vote.get("makes_sense"), bool):
                        raise DataError("expected true/false", field=f"{field}.judgments[{j}].makes_sense", **where)
                    votes[voter] = vote["makes_sense"]
                annotations.append(
                    Annotation(
                        annotator=author,
                        label=label,
                        explanation=_explanation(entry.get("reason"), where, f"{field}.reason"),
                        votes=votes,
                        self_corrected=bool(entry.get("self_corrected", False)),
                        label_correction=bool(entry.get("label_correction", False)),
                    )
                )
        error_labels = tuple(
            _label(NLI, lab, where, "error_labels") for lab in _require(row, "error_labels", list, where)
        )
        distributions = {}
        if row.get("chaosnli_labels") is not None:
            counts = _require(row, "chaosnli_labels", dict, where)
            # ChaosNLI counts out of 100; labels with 0 votes are omitted in this file.
            vector = [counts.get(short, 0) for short in NLI.short]
            distributions["chaosnli"] = check_distribution(
                [c / 100 for c in vector], 3, where, "chaosnli_labels"
            )
        round1 = row.get("label_count_round_1") or {}
        distributions["varierr"] = _normalise_counts([round1.get(lab) or 0.0 for lab in NLI.labels])
        items.append(
            Item(
                id=item_id,
                task="nli",
                inputs={"premise": premise, "hypothesis": hypothesis},
                annotations=annotations,
                error_labels=error_labels,
                distributions=distributions,
                validated=True,
                meta={
                    "idk": [
                        _annotator_from_index(k, where, f"idk[{j}]")
                        for j, k in enumerate(_optional(row, "idk", list, where, []))
                    ],
                    "source": "varierr",
                },
            )
        )
    return items


def _annotator_from_index(value, where: dict, field: str) -> str:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < len(ANNOTATORS):
        raise DataError(f"unknown annotator {value!r} (valid: 0-{len(ANNOTATORS) - 1})", field=field, **where)
    return f"A{value + 1}"


# --- LeWiDi 2025 -----------------------------------------------------------------------------------------------

_LEWIDI_TASKS = {"natural language inference": "nli", "paraphrase detection": "paraphrase"}


def _lewidi_annotator(name: str, where: dict, field: str) -> str:
    # LeWiDi `Ann{k}` is capo's `A{k}`.
    canonical = "A" + name.strip()[3:] if name.strip().startswith("Ann") else name
    if canonical not in ANNOTATORS:
        raise DataError(f"unknown annotator {name!r} (valid: Ann1-Ann4)", field=field, **where)
    return canonical


def load_lewidi(path: str | Path) -> list[Item]:
    """A LeWiDi 2025 VariErrNLI or Paraphrase split file (one JSON object: item id -> record).

    VariErrNLI: explanation i belongs to annotator i of the expanded `annotators` string, and to that annotator's
    k-th label in their alphabetically sorted label set. Paraphrase: one Likert label and explanation per Ann1..Ann4.
    LeWiDi keys repeat across splits for different items, so `meta["split"]` is part of an item's identity.
    """
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError("expected a JSON object mapping item ids to records", path=str(path))
    items = []
    for item_id, row in data.items():
        where = {"path": str(path), "item": item_id}
        if not isinstance(row, dict):
            raise DataError("expected an object", **where)
        task_name = _require(row, "annotation task", str, where)
        if task_name not in _LEWIDI_TASKS:
            raise DataError(f"unknown task {task_name!r} (valid: {', '.join(_LEWIDI_TASKS)})", field="annotation task", **where)
        task = _LEWIDI_TASKS[task_name]
        space = label_space(task)
        text = _require(row, "text", dict, where)
        source_fields = ("context", "statement") if task == "nli" else ("Question1", "Question2")
        inputs = {
            ours: _require(text, theirs, str, where)
            for ours, theirs in zip(TASK_INPUTS[task], source_fields)
        }
        names = [n for n in _require(row, "annotators", str, where).split(",") if n.strip()]
        labels_by_name = _require(row, "annotations", dict, where)
        explanations = _require(_require(row, "other_info", dict, where), "explanations", list, where)
        if len(explanations) != len(names):
            raise DataError(
                f"{len(explanations)} explanations for {len(names)} annotator slots",
                field="other_info.explanations",
                **where,
            )
        seen: dict[str, int] = {}
        annotations = []
        for slot, (name, text_) in enumerate(zip(names, explanations)):
            if name not in labels_by_name:
                raise DataError(f"annotator {name} has no entry in 'annotations'", field="annotators", **where)
            label_set = sorted(str(labels_by_name[name]).split(","))
            k = seen.get(name, 0)
            seen[name] = k + 1
            if k >= len(label_set):
                raise DataError(f"{name} has more explanation slots than labels", field="annotators", **where)
            annotations.append(
                Annotation(
                    annotator=_lewidi_annotator(name, where, "annotators"),
                    label=_label(space, label_set[k], where, f"annotations.{name}"),
                    explanation=_explanation(text_, where, f"other_info.explanations[{slot}]"),
                )
            )
        meta = {"split": row.get("split"), "source": f"lewidi2025-{task}"}
        distributions = {}
        soft = row.get("soft_label")
        if task == "paraphrase" and isinstance(soft, dict):
            distributions["lewidi_soft"] = check_distribution(
                [soft.get(lab) for lab in space.labels], len(space), where, "soft_label"
            )
        elif task == "nli" and isinstance(soft, dict):
            # One Bernoulli per label (annotators may give several labels): not a distribution over classes.
            try:
                meta["label_presence"] = [float(soft[lab]["1"]) for lab in space.labels]
            except (KeyError, TypeError, ValueError):
                raise DataError("expected {label: {'0': q, '1': p}} for each label", field="soft_label", **where) from None
        if task == "nli":
            # The VariErr id (MNLI pairID), as everywhere else: LeWiDi keys drop its letter and repeat across splits.
            meta["lewidi_id"] = str(item_id)
            item_id = nli_item_id(inputs["premise"], inputs["hypothesis"])
        items.append(
            Item(id=str(item_id), task=task, inputs=inputs, annotations=annotations, distributions=distributions, meta=meta)
        )
    return items


def load_lewidi_annotators_meta(path: str | Path) -> dict[str, dict]:
    """The `*_annotators_meta.json` files (not strict JSON: trailing commas), keyed by canonical annotator id."""
    raw = read_json(path, allow_trailing_commas=True)
    if not isinstance(raw, dict):
        raise DataError("expected a JSON object of annotators", path=str(path))
    return {_lewidi_annotator(name, {"path": str(path)}, name): info for name, info in raw.items()}


# --- MJD papers' files -----------------------------------------------------------------------------------------


def load_nli341(path: str | Path = NLI341_PATH, varierr_path: str | Path = VARIERR_PATH) -> list[Item]:
    """The 341 VariErr items with four round-1 explanations, with ChaosNLI, MNLI and VariErr distributions.

    The file does not say who wrote each comment; where the item is found in VariErr the comment is attributed by
    matching its (whitespace-normalised) text to the VariErr reasons.
    """
    by_id = {item.id: item for item in load_varierr(varierr_path)} if Path(varierr_path).exists() else {}
    items = []
    for line, row in iter_jsonl(path):
        where = {"path": str(path), "line": line}
        premise = _require(row, "premise", str, where)
        hypothesis = _require(row, "hypothesis", str, where)
        item_id = nli_item_id(premise, hypothesis, varierr_path)
        where["item"] = item_id
        mnli = _require(row, "mnli labels", list, where)
        if len(mnli) != 2 or not isinstance(mnli[1], list):
            raise DataError("expected [gold_letter, [nE, nN, nC]]", field="mnli labels", **where)
        gold = _label(NLI, mnli[0], where, "mnli labels")
        authors = {}
        if item_id in by_id:
            authors = {(_norm_text(a.explanation), a.label): a.annotator for a in by_id[item_id].annotations}
        annotations = []
        for k, comment in enumerate(_require(row, "comments", list, where)):
            if not isinstance(comment, list) or len(comment) != 2:
                raise DataError("expected [explanation, letter]", field=f"comments[{k}]", **where)
            explanation = _explanation(comment[0], where, f"comments[{k}][0]")
            label = _label(NLI, comment[1], where, f"comments[{k}][1]")
            annotations.append(
                Annotation(annotator=authors.get((_norm_text(explanation), label)), label=label, explanation=explanation)
            )
        items.append(
            Item(
                id=item_id,
                task="nli",
                inputs={"premise": premise, "hypothesis": hypothesis},
                annotations=annotations,
                distributions={
                    "chaosnli": check_distribution(_require(row, "chaos probs", list, where), 3, where, "chaos probs"),
                    "mnli": _normalise_counts(mnli[1]),
                    "mnli_onehot": [float(lab == gold) for lab in NLI.labels],
                    "varierr": _normalise_counts(_require(row, "varierr labels", list, where)),
                },
                meta={"source": "nli341", "mnli_gold": gold, "mnli_counts": mnli[1]},
            )
        )
    return items


def load_chaosnli(path: str | Path, varierr_path: str | Path = VARIERR_PATH) -> list[Item]:
    """ChaosNLI dev/test as shipped by MJD-Estimator: premise, hypothesis, `label` = [pE, pN, pC]."""
    items = []
    for line, row in iter_jsonl(path):
        where = {"path": str(path), "line": line}
        premise = _require(row, "premise", str, where)
        hypothesis = _require(row, "hypothesis", str, where)
        item_id = nli_item_id(premise, hypothesis, varierr_path)
        items.append(
            Item(
                id=item_id,
                task="nli",
                inputs={"premise": premise, "hypothesis": hypothesis},
                distributions={"chaosnli": check_distribution(row.get("label"), 3, {**where, "item": item_id}, "label")},
                meta={"source": f"chaosnli-{Path(path).stem}"},
            )
        )
    return items


_MODEL_EXPLANATION_KEYS = ("machine_comments", "machine_replaced_comments", "machine_generated_comments")


def load_model_explanations(
    path: str | Path, varierr_path: str | Path = VARIERR_PATH
) -> dict[str, list[tuple[str, str]]]:
    """A released LLM explanation file: item id -> [(explanation, label), ...] in file order, whitespace-stripped."""
    out: dict[str, list[tuple[str, str]]] = {}
    for line, row in iter_jsonl(path):
        where = {"path": str(path), "line": line}
        item_id = nli_item_id(_require(row, "premise", str, where), _require(row, "hypothesis", str, where), varierr_path)
        where["item"] = item_id
        key = next((k for k in _MODEL_EXPLANATION_KEYS if k in row), None)
        if key is None:
            raise DataError("missing field", field=" / ".join(_MODEL_EXPLANATION_KEYS), **where)
        pairs = []
        for k, pair in enumerate(_require(row, key, list, where)):
            if not isinstance(pair, list) or len(pair) != 2:
                raise DataError("expected [explanation, letter]", field=f"{key}[{k}]", **where)
            pairs.append((_explanation(pair[0], where, f"{key}[{k}][0]"), _label(NLI, pair[1], where, f"{key}[{k}][1]")))
        out[item_id] = pairs
    return out


# --- bring your own --------------------------------------------------------------------------------------------


def load_items_jsonl(path: str | Path) -> list[Item]:
    """capo's own JSONL format, one item per line::

        {"id": "q17", "task": "nli",                       # or "paraphrase"
         "inputs": {"premise": "...", "hypothesis": "..."},  # paraphrase: question1, question2
         "annotations": [{"annotator": "A1", "label": "neutral", "explanation": "...",
                          "votes": {"A2": true, "A3": false},   # optional, the author's own vote included
                          "self_corrected": false}],            # optional
         "error_labels": [],                                 # optional
         "distributions": {"chaosnli": [0.2, 0.5, 0.3]}}     # optional, each in label-space order, sums to 1

    Items with any `votes` are treated as validated (validity predicates apply to them).
    """
    items, seen = [], set()
    for line, row in iter_jsonl(path):
        where = {"path": str(path), "line": line}
        item_id = str(_require(row, "id", (str, int), where))
        if not item_id.strip():
            raise DataError("empty item id", field="id", **where)
        where["item"] = item_id
        if item_id in seen:
            raise DataError("duplicate item id", field="id", **where)
        seen.add(item_id)
        task = _require(row, "task", str, where)
        try:
            space = label_space(task)
        except DataError as err:
            raise err.at(field="task", **where) from None
        inputs_row = _require(row, "inputs", dict, where)
        inputs = {}
        for name in TASK_INPUTS[task]:
            value = inputs_row.get(name)
            if not isinstance(value, str) or not value.strip():
                raise DataError("missing or empty input text", field=f"inputs.{name}", **where)
            inputs[name] = value
        annotations = []
        for k, entry in enumerate(_optional(row, "annotations", list, where, [])):
            field = f"annotations[{k}]"
            if not isinstance(entry, dict):
                raise DataError("expected an object", field=field, **where)
            author = entry.get("annotator")
            if author not in ANNOTATORS:
                raise DataError(f"unknown annotator {author!r} (valid: {', '.join(ANNOTATORS)})", field=f"{field}.annotator", **where)
            votes = entry.get("votes", {})
            if not isinstance(votes, dict) or any(v not in ANNOTATORS or not isinstance(ok, bool) for v, ok in votes.items()):
                raise DataError("expected {annotator id: true/false}", field=f"{field}.votes", **where)
            annotations.append(
                Annotation(
                    annotator=author,
                    label=_label(space, entry.get("label"), where, f"{field}.label"),
                    explanation=_explanation(entry.get("explanation"), where, f"{field}.explanation"),
                    votes=dict(votes),
                    self_corrected=bool(entry.get("self_corrected", False)),
                )
            )
        distributions = {
            name: check_distribution(values, len(space), where, f"distributions.{name}")
            for name, values in _optional(row, "distributions", dict, where, {}).items()
        }
        items.append(
            Item(
                id=item_id,
                task=task,
                inputs=inputs,
                annotations=annotations,
                error_labels=tuple(
                    _label(space, lab, where, "error_labels") for lab in _optional(row, "error_labels", list, where, [])
                ),
                distributions=distributions,
                validated=any(a.votes for a in annotations),
                meta={"source": str(path)},
            )
        )
    return items


def item_to_json(item: Item) -> dict:
    """The inverse of `load_items_jsonl` for one item."""
    return {
        "id": item.id,
        "task": item.task,
        "inputs": item.inputs,
        "annotations": [
            {
                "annotator": a.annotator,
                "label": a.label,
                "explanation": a.explanation,
                "votes": a.votes,
                "self_corrected": a.self_corrected,
            }
            for a in item.annotations
        ],
        "error_labels": list(item.error_labels),
        "distributions": item.distributions,
    }


DATASETS = {
    "varierr": lambda: load_varierr(),
    "nli341": lambda: load_nli341(),
    "chaosnli-dev": lambda: load_chaosnli(CHAOS_DIR / "dev.json"),
    "chaosnli-test": lambda: load_chaosnli(CHAOS_DIR / "test.json"),
    **{
        f"lewidi-{short}-{split}": (lambda d=d, split=split: load_lewidi(LEWIDI_DIR / d / f"{d}_{split}.json"))
        for short, d, splits in (("ven", "VariErrNLI", ("train", "dev", "test")), ("par", "Paraphrase", ("train", "dev")))
        for split in splits
    },
}


def load_dataset(name_or_path: str) -> list[Item]:
    """A shipped data set by name (see `DATASETS`) or a path: `.jsonl` in capo's format, LeWiDi `.json`."""
    if name_or_path in DATASETS:
        return DATASETS[name_or_path]()
    path = Path(name_or_path)
    if not path.exists():
        raise DataError(f"not a file and not a shipped data set (known: {', '.join(DATASETS)})", path=name_or_path)
    if path.suffix == ".jsonl":
        return load_items_jsonl(path)
    return load_lewidi(path)
