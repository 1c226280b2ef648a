"""The MJD papers' files: the 341-item `NLI_explanations.json`, ChaosNLI dev/test and the released LLM
model-explanation files."""

from __future__ import annotations

from pathlib import Path

from capo.data.formats.common import (
    NLI341_PATH,
    VARIERR_PATH,
    check_distribution,
    check_explanation,
    check_label,
    nli_item,
    nli_item_id,
    nli_pair,
    norm_text,
    normalise_counts,
    require_field,
)
from capo.data.formats.varierr import load_varierr
from capo.data.schema import NLI, Annotation, Item
from capo.errors import DataError
from capo.io import iter_jsonl


def load_nli341(path: str | Path = NLI341_PATH, varierr_path: str | Path = VARIERR_PATH) -> list[Item]:
    """The 341 VariErr items with four round-1 explanations, with ChaosNLI, MNLI and VariErr distributions.

    The file does not say who wrote each comment; where the item is found in VariErr the comment is attributed by
    matching its (whitespace-normalised) text to the VariErr reasons.
    """
    by_id = {item.id: item for item in load_varierr(varierr_path)} if Path(varierr_path).exists() else {}
    items = []
    for line, row in iter_jsonl(path):
        where = {"path": str(path), "line": line}
        premise, hypothesis, item_id = nli_pair(row, where, varierr_path)
        mnli = require_field(row, "mnli labels", list, where)
        if len(mnli) != 2 or not isinstance(mnli[1], list):
            raise DataError("expected [gold_letter, [nE, nN, nC]]", field="mnli labels", **where)
        gold = check_label(NLI, mnli[0], where, "mnli labels")
        authors = {}
        if item_id in by_id:
            authors = {(norm_text(a.explanation), a.label): a.annotator for a in by_id[item_id].annotations}
        annotations = []
        for k, comment in enumerate(require_field(row, "comments", list, where)):
            if not isinstance(comment, list) or len(comment) != 2:
                raise DataError("expected [explanation, letter]", field=f"comments[{k}]", **where)
            explanation = check_explanation(comment[0], where, f"comments[{k}][0]")
            label = check_label(NLI, comment[1], where, f"comments[{k}][1]")
            annotations.append(
                Annotation(annotator=authors.get((norm_text(explanation), label)), label=label, explanation=explanation)
            )
        items.append(
            nli_item(
                item_id, premise, hypothesis,
                annotations=annotations,
                distributions={
                    "chaosnli": check_distribution(require_field(row, "chaos probs", list, where), 3, where, "chaos probs"),
                    "mnli": normalise_counts(mnli[1]),
                    "mnli_onehot": [float(lab == gold) for lab in NLI.labels],
                    "varierr": normalise_counts(require_field(row, "varierr labels", list, where)),
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
        premise, hypothesis, item_id = nli_pair(row, where, varierr_path)
        items.append(
            nli_item(
                item_id, premise, hypothesis,
                distributions={"chaosnli": check_distribution(row.get("label"), 3, where, "label")},
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
        item_id = nli_item_id(require_field(row, "premise", str, where), require_field(row, "hypothesis", str, where), varierr_path)
        where["item"] = item_id
        key = next((k for k in _MODEL_EXPLANATION_KEYS if k in row), None)
        if key is None:
            raise DataError("missing field", field=" / ".join(_MODEL_EXPLANATION_KEYS), **where)
        pairs = []
        for k, pair in enumerate(require_field(row, key, list, where)):
            if not isinstance(pair, list) or len(pair) != 2:
                raise DataError("expected [explanation, letter]", field=f"{key}[{k}]", **where)
            pairs.append((check_explanation(pair[0], where, f"{key}[{k}][0]"), check_label(NLI, pair[1], where, f"{key}[{k}][1]")))
        out[item_id] = pairs
    return out
