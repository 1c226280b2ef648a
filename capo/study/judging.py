"""The study's judges on one slice: every generated response and every real held-out response (the ceiling) scored by
each judge of `JUDGES` (trained char n-gram judges, `capo.evaluate.behaviour.judges.TrainedJudge`),
as the per-response rows the slice commits (`responses.jsonl`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from capo.data.datasets import TaskData
from capo.data.schema import Item

# name -> (features, reduce, with_label, training items): the judges every response is scored by.
JUDGES = {
    "raw": ("char", False, True, "all", "char n-grams of label + explanation, trained on every training item"),
    "reduced": ("char", True, True, "all", ("the same after input-content reduction (words copied from the item's "
                                           "inputs removed): the primary judge")),
    "expl_only": ("char", False, False, "all", "char n-grams of the explanation alone (no label)"),
    "disjoint": ("char", True, True, "half1", ("the reduced judge trained on training half 1 only, items no "
                                              "explainer trained on")),
}


def fitted_judges(data: TaskData, split_seed: int) -> dict:
    """Each judge fitted on its training responses: every training item, or half 1 (no explainer's items)."""
    from capo.data.variants import half_ids
    from capo.evaluate.behaviour.judges import TrainedJudge
    from capo.evaluate.behaviour.patterns import responses

    train = responses(data.items("train"))
    half1 = half_ids([item.id for item in data.items("train")], 1, split_seed)
    judges = {}
    for name, (features, reduce, with_label, items, _) in JUDGES.items():
        rows = train if items == "all" else [r for r in train if r.item_id in half1]
        judges[name] = TrainedJudge(features, with_label=with_label, reduce=reduce).fit(rows)
    return judges


def judge_rows(data: TaskData, items: Sequence[Item], generated: Mapping[str, str | Path], split_seed: int
               ) -> list[dict]:
    """Rows of the real held-out responses (source `human`) and of every generated file (source = its name), each
    with its judges' log-probabilities over A1..A4 (none for a response that did not parse)."""
    from capo.evaluate.behaviour.imitation import generated_responses, read_generations, target_of
    from capo.evaluate.behaviour.patterns import responses

    by_id = {item.id: item for item in items}
    space = items[0].label_space
    rows: list[dict] = []
    judged = []  # (row index, Response)
    for response in responses(items):
        judged.append((len(rows), response))
        rows.append({"source": "human", "target": response.annotator, "item_id": response.item_id, "sample": 0,
                     "label": response.label, "explanation": response.explanation, "parsed": True})
    for source, path in sorted(generated.items()):
        for record in read_generations(path, by_id):
            parsed, _ = generated_responses([record], by_id, space)
            row = {"source": source, "target": target_of(record), "item_id": str(record["id"]),
                   "sample": int(record.get("sample", 0)), "label": record.get("label"),
                   "explanation": str(record.get("explanation") or ""), "parsed": bool(parsed)}
            if parsed:
                judged.append((len(rows), parsed[0]))
            rows.append(row)
    judges = fitted_judges(data, split_seed)
    scores = {name: judge.log_proba([r for _, r in judged]) for name, judge in judges.items()}
    for k, (index, _) in enumerate(judged):
        rows[index]["judge"] = {name: [round(float(v), 5) for v in matrix[k]] for name, matrix in scores.items()}
    return rows
