"""capo's own bring-your-own JSONL item format (`load_items_jsonl`) and its writer (`item_to_json`)."""

from __future__ import annotations

from pathlib import Path

from capo.data.formats.common import (
    check_distribution,
    check_explanation,
    check_label,
    optional_field,
    require_field,
)
from capo.data.schema import ANNOTATORS, TASK_INPUTS, Annotation, Item, label_space
from capo.errors import DataError
from capo.io import iter_jsonl


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
        item_id = str(require_field(row, "id", (str, int), where))
        if not item_id.strip():
            raise DataError("empty item id", field="id", **where)
        where["item"] = item_id
        if item_id in seen:
            raise DataError("duplicate item id", field="id", **where)
        seen.add(item_id)
        task = require_field(row, "task", str, where)
        try:
            space = label_space(task)
        except DataError as err:
            raise err.at(field="task", **where) from None
        inputs_row = require_field(row, "inputs", dict, where)
        inputs = {}
        for name in TASK_INPUTS[task]:
            value = inputs_row.get(name)
            if not isinstance(value, str) or not value.strip():
                raise DataError("missing or empty input text", field=f"inputs.{name}", **where)
            inputs[name] = value
        annotations = []
        for k, entry in enumerate(optional_field(row, "annotations", list, where, [])):
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
                    label=check_label(space, entry.get("label"), where, f"{field}.label"),
                    explanation=check_explanation(entry.get("explanation"), where, f"{field}.explanation"),
                    votes=dict(votes),
                    self_corrected=bool(entry.get("self_corrected", False)),
                )
            )
        distributions = {
            name: check_distribution(values, len(space), where, f"distributions.{name}")
            for name, values in optional_field(row, "distributions", dict, where, {}).items()
        }
        items.append(
            Item(
                id=item_id,
                task=task,
                inputs=inputs,
                annotations=annotations,
                error_labels=tuple(
                    check_label(space, lab, where, "error_labels") for lab in optional_field(row, "error_labels", list, where, [])
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
