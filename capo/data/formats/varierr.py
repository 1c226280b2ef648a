"""VariErr NLI (JSONL): round-1 label-explanation pairs with round-2 validity votes."""

from __future__ import annotations

from pathlib import Path

from capo.data.formats.common import (
    VARIERR_PATH,
    check_distribution,
    check_explanation,
    check_label,
    nli_item,
    normalise_counts,
    optional_field,
    require_field,
)
from capo.data.schema import ANNOTATORS, NLI, Annotation, Item
from capo.errors import DataError
from capo.io import iter_jsonl


def load_varierr(path: str | Path = VARIERR_PATH) -> list[Item]:
    """VariErr NLI JSONL: round-1 label-explanation pairs with round-2 validity votes. Annotator k -> `A{k+1}`."""
    items = []
    for line, row in iter_jsonl(path):
        where = {"path": str(path), "line": line}
        item_id = require_field(row, "id", str, where)
        where["item"] = item_id
        premise = require_field(row, "context", str, where)
        hypothesis = require_field(row, "statement", str, where)
        annotations = []
        for label in NLI.labels:
            for k, entry in enumerate(require_field(row, label, list, where)):
                field = f"{label}[{k}]"
                if not isinstance(entry, dict):
                    raise DataError("expected an object", field=field, **where)
                author = _annotator_from_index(entry.get("annotator"), where, f"{field}.annotator")
                votes = {}
                for j, vote in enumerate(optional_field(entry, "judgments", list, where, [])):
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
                        explanation=check_explanation(entry.get("reason"), where, f"{field}.reason"),
                        votes=votes,
                        self_corrected=bool(entry.get("self_corrected", False)),
                        label_correction=bool(entry.get("label_correction", False)),
                    )
                )
        error_labels = tuple(
            check_label(NLI, lab, where, "error_labels") for lab in require_field(row, "error_labels", list, where)
        )
        distributions = {}
        if row.get("chaosnli_labels") is not None:
            counts = require_field(row, "chaosnli_labels", dict, where)
            # ChaosNLI counts out of 100; labels with 0 votes are omitted in this file.
            vector = [counts.get(short, 0) for short in NLI.short]
            distributions["chaosnli"] = check_distribution(
                [c / 100 for c in vector], 3, where, "chaosnli_labels"
            )
        round1 = row.get("label_count_round_1") or {}
        distributions["varierr"] = normalise_counts([round1.get(lab) or 0.0 for lab in NLI.labels])
        items.append(
            nli_item(
                item_id, premise, hypothesis,
                annotations=annotations,
                error_labels=error_labels,
                distributions=distributions,
                validated=True,
                meta={
                    "idk": [
                        _annotator_from_index(k, where, f"idk[{j}]")
                        for j, k in enumerate(optional_field(row, "idk", list, where, []))
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
