"""LLM explainers as LeWiDi 2025 annotators (`eval/lewidi.py predict --model`): each (item, annotator)'s label
probabilities from `capo.generate.labels.LabelScorer`, then a decision. VEN per-label probabilities in the official
order (contradiction, entailment, neutral), a label predicted above a threshold (several, or none, where the
probabilities allow); Par the 11 Likert probabilities, the label by argmax, rounded expectation or median. The
threshold / rule is the one `capo.lewidi.perspectivist.choose_on_dev` finds best on a labelled decision split (dev),
or a fixed one; no scored item's own labels shape its decision (`capo.lewidi.perspectivist.fit_decisions`): the
decision split's own items are scored cross-fitted (each item fold with the decision fitted on the other folds),
another split's items with the decision fitted on all of the decision split.
Adapters must not have trained on the evaluated or the decision split's items (`capo.data.heldout.check_heldout`
against their run manifests): adapters trained on LeWiDi's own train split (`recipes/sft.py --dataset lewidi-ven` /
`lewidi-par`), never on VariErr split seed 0 (42 of the 50 VEN test items). LeWiDi's Ann1..Ann4 are capo's A1..A4.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from capo.data.formats.lewidi import (
    LEWIDI_TASK,
    PAR_LABELS,
    VEN_LABELS,
    LewidiItem,
    capo_annotator,
    capo_item,
    check_dataset,
    lewidi_split_path,
    read_lewidi,
)
from capo.data.schema import NLI
from capo.errors import DataError
from capo.generate.labels import LabelScorer, check_not_trained_on, resolve_explainers
from capo.lewidi.perspectivist import DECISION_FOLDS, PAR_DECISIONS, decide_per_item, fit_decisions, mean_soft
from capo.lewidi.predictions import aggregate_soft, write_annotator_predictions, write_soft_predictions
from capo.lewidi.score import score


def lewidi_rows(items: Sequence[LewidiItem]) -> list[dict]:
    """One row per (item, annotator) in split order, as `capo.lewidi.perspectivist.decide` reads them."""
    return [{"id": item.id, "annotator": a} for item in items for a in item.annotators]


def lewidi_probabilities(scorer: LabelScorer, items: Sequence[LewidiItem]) -> tuple[list[dict], np.ndarray]:
    """(rows, probabilities) for every (item, annotator): VEN in VEN_LABELS order (not capo's [E, N, C]), Par -5..5."""
    rows = lewidi_rows(items)
    converted = {item.id: capo_item(item) for item in items}
    probs = scorer.probabilities([(converted[r["id"]], capo_annotator(r["annotator"])) for r in rows])
    if items and items[0].dataset == "ven":
        probs = probs[:, [NLI.labels.index(label) for label in VEN_LABELS]]
    return rows, probs


def parse_decision(decision: str, dataset: str):
    """"dev" (chosen on the decision split), a VEN threshold strictly between 0 and 1, or a Par rule."""
    if decision == "dev":
        return decision
    if dataset == "par":
        if decision not in PAR_DECISIONS:
            raise DataError(f"unknown value {decision!r} (valid: dev, {', '.join(PAR_DECISIONS)})", field="decision")
        return decision
    try:
        value = float(decision)
    except ValueError:
        value = math.nan
    if not 0 < value < 1:
        raise DataError(f"expected dev or a threshold strictly between 0 and 1, got {decision!r}", field="decision")
    return value


def output_paths(output: str, soft: str | None, soft_mean: str | None, probs: str | None) -> dict[str, str]:
    """The four files a model predictor writes; unnamed ones go beside `output` (`P.jsonl` -> `P_soft.jsonl`, ...)."""
    stem = Path(output)
    base = stem.with_suffix("") if stem.suffix == ".jsonl" else stem
    derive = lambda tag: f"{base}_{tag}.jsonl"
    return {"predictions": output, "soft": soft or derive("soft"), "soft_mean": soft_mean or derive("soft_mean"),
            "probs": probs or derive("probs")}


def predict_lewidi(
    dataset: str,
    split: str,
    output: str,
    *,
    model: str,
    explainers: str | None = None,
    decision: str = "dev",
    decision_split: str = "dev",
    decision_folds: int | None = None,
    soft_output: str | None = None,
    soft_mean_output: str | None = None,
    probs_output: str | None = None,
    dtype: str = "float32",
    batch_size: int = 16,
    min_shared_tokens: int | None = 16,
    allow_unchecked_adapters: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Per-annotator predictions for every (item, annotator) of `split` from explainers (or the base model), the
    decision fitted on `decision_split` (for the decision split's own items cross-fitted over `decision_folds`
    item folds, default `DECISION_FOLDS`: no item's labels shape its own decision); writes predictions,
    organiser-aggregated soft labels, mean-probability soft labels and per-row probabilities (official label
    order), and returns the report (decision, its fit, scores on a labelled split, outputs). Everything is checked
    before the model loads."""
    from capo.generate.backends.base import check_dtype
    from capo.io import check_model_path, check_output, write_jsonl
    from capo.models.corpus_lm import pretraining_item_ids

    dataset = check_dataset(dataset)
    task = LEWIDI_TASK[dataset]
    fixed = parse_decision(decision, dataset)
    check_dtype(dtype)
    items = read_lewidi(lewidi_split_path(dataset, split), dataset)
    dev_path = lewidi_split_path(dataset, decision_split)
    same = dev_path.resolve() == lewidi_split_path(dataset, split).resolve()
    dev_items = items if same else read_lewidi(dev_path, dataset)
    if fixed == "dev" and not all(item.labelled for item in dev_items):
        raise DataError("the decision split has no labels: the decision is fitted on it (give a labelled "
                        "--decision_split, or a fixed --decision)", path=str(dev_path), field="decision_split")
    if fixed == "dev" and len(dev_items) < 2 and {i.id for i in items} & {i.id for i in dev_items}:
        raise DataError("the decision is cross-fitted over the decision split's items: it needs at least 2",
                        path=str(dev_path), field="decision_split")
    paths = output_paths(output, soft_output, soft_mean_output, probs_output)
    for path in paths.values():
        check_output(path)
    if len(set(paths.values())) != len(paths):
        raise DataError("two outputs name the same file", field="output")
    check_model_path(model)
    annotators = sorted({capo_annotator(a) for item in [*items, *dev_items] for a in item.annotators})
    chosen = resolve_explainers(explainers, task, annotators)
    evaluated = [capo_item(item) for item in items] + ([] if same or fixed != "dev" else
                                                        [capo_item(item) for item in dev_items])
    # An adapter without a run manifest is refused here unless allow_unchecked_adapters; the report names it.
    unchecked = check_not_trained_on(evaluated, chosen, "score LeWiDi with adapters trained on LeWiDi's own train "
                                     f"split (recipes/sft.py --dataset lewidi-{dataset})", log=log,
                                     allow_unchecked=allow_unchecked_adapters)

    # Said, not refused: a corpus LM pre-trained on VariErr explanations is a base model like any other here.
    pretrained = {item.id for item in evaluated} & pretraining_item_ids(model)
    if pretrained:
        log(f"{len(pretrained)} of the {len(evaluated)} evaluated items are in the base model's pre-training corpus")
    scorer = LabelScorer(model, chosen, dtype=dtype, batch_size=batch_size, min_shared_tokens=min_shared_tokens)
    report: dict = {"dataset": dataset, "split": split, "model": model, "predictor": chosen.kind,
                    "explainers": chosen.folders, "n_items": len(items), "in_base_pretraining": len(pretrained),
                    "unchecked_adapters": unchecked}
    rows, probs = lewidi_probabilities(scorer, items)
    if fixed == "dev":
        # No scored item's own labels shape its decision: the decision split's items get the decision cross-fitted
        # over its item folds, the items of another split the one fitted on all of it (`fit_decisions`).
        dev_rows, dev_probs = (rows, probs) if same else lewidi_probabilities(scorer, dev_items)
        choices, fitted = fit_decisions(items, dev_items, dev_rows, dev_probs, dataset, split=decision_split,
                                        folds=decision_folds or DECISION_FOLDS)
        report.update(decision_split=decision_split, **fitted)
        log(f"decision: {'threshold' if dataset == 'ven' else 'rule'} {fitted['decision']} (best on "
            f"{decision_split}); {split}: {fitted['decision_fit']}")
    else:
        choices = {item.id: fixed for item in items}
        report.update(decision=fixed, decision_source="fixed", decision_fit="fixed")
    predictions = decide_per_item(rows, probs, dataset, choices)
    soft, soft_mean = aggregate_soft(items, predictions), mean_soft(items, rows, probs)
    report.update(n_pairs=len(rows))
    if all(item.labelled for item in items):
        report["scores"] = score(items, predictions, soft)
        report["soft_mean"] = score(items, None, soft_mean)["soft"]
    write_annotator_predictions(paths["predictions"], predictions, dataset)
    write_soft_predictions(paths["soft"], soft)
    write_soft_predictions(paths["soft_mean"], soft_mean)
    labels = list(VEN_LABELS if dataset == "ven" else PAR_LABELS)
    write_jsonl(paths["probs"], ({"id": r["id"], "annotator": r["annotator"], "labels": labels,
                                  "probs": [round(float(x), 6) for x in p]} for r, p in zip(rows, probs)))
    report["outputs"] = paths
    return report
