"""Official LeWiDi 2025 scores of prediction files (`score`).

Lower is better; the official definitions are in `data/lewidi2025/README.md`, "Official metrics", and the
organisers' `LeWiDi_3-2025/Evaluation_LeWiDi_2025_Metrics.ipynb`: VEN soft = multilabel average Manhattan
distance, VEN perspectivist = multilabel error rate over the distinct annotators of each item, Par soft = average
Wasserstein distance over the 11 ordered bins, Par perspectivist = mean |target - prediction| / 11. The organisers
round intermediate sums to 5 decimals; these scores do not (a difference below 1e-5).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from capo.data.formats.lewidi import PAR_LABELS, VEN_LABELS, LewidiItem
from capo.errors import DataError
from capo.evaluate.distributions.metrics import (
    lewidi_nli_perspectivist,
    lewidi_nli_soft,
    lewidi_paraphrase_perspectivist,
    lewidi_paraphrase_soft,
)
from capo.evaluate.intervals import mean_interval
from capo.lewidi.predictions import (
    AnnotatorPredictions,
    SoftPredictions,
    aggregate_soft,
    check_complete,
    check_soft_complete,
    dataset_of,
    perspectivist_row,
)


def score(
    items: Sequence[LewidiItem],
    predictions: AnnotatorPredictions | None = None,
    soft: SoftPredictions | None = None,
    *,
    predictions_path: str | Path = "predictions",
    soft_path: str | Path = "soft labels",
) -> dict[str, float]:
    """The official scores of a labelled split: `perspectivist` from per-annotator predictions, `soft` from soft
    labels (aggregated from the per-annotator predictions when none are given)."""
    if not items or not all(item.labelled for item in items):
        raise DataError("the split has no labels: score against a labelled split (train, dev, or VEN test)")
    if predictions is None and soft is None:
        raise DataError("nothing to score: give per-annotator predictions, soft labels, or both")
    dataset = dataset_of(items)
    report: dict[str, float] = {"n_items": len(items), "n_pairs": sum(len(i.annotators) for i in items)}
    if predictions is not None:
        check_complete(items, predictions, predictions_path)
        targets = [perspectivist_row(item, item.labels.__getitem__) for item in items]
        preds = [perspectivist_row(item, lambda a, k=item.id: predictions[(k, a)]) for item in items]
        metric = lewidi_nli_perspectivist if dataset == "ven" else lewidi_paraphrase_perspectivist
        report["perspectivist"] = metric(targets, preds)
        if soft is None:
            soft = aggregate_soft(items, predictions)
    if soft is not None:
        check_soft_complete(items, soft, soft_path)
        order = VEN_LABELS if dataset == "ven" else PAR_LABELS
        target = [[item.soft_label[label] for label in order] for item in items]
        pred = [[soft[item.id][label] for label in order] for item in items]
        report["soft"] = (lewidi_nli_soft if dataset == "ven" else lewidi_paraphrase_soft)(target, pred)
    return report


def item_scores(items: Sequence[LewidiItem], predictions: AnnotatorPredictions | None,
                soft: SoftPredictions | None = None) -> dict[str, np.ndarray]:
    """Each item's own official scores (`score` of a one-item split), per measure: what item bootstraps resample."""
    per = [score([item], None if predictions is None else {k: v for k, v in predictions.items() if k[0] == item.id},
                 None if soft is None else {item.id: soft[item.id]}) for item in items]
    return {key: np.array([p[key] for p in per]) for key in ("perspectivist", "soft") if key in per[0]}


def paired_bootstrap(items: Sequence[LewidiItem], a: tuple, b: tuple, *, reps: int = 2000, seed: int = 0,
                     level: float = 0.95) -> dict[str, dict[str, float]]:
    """Per measure, the mean difference a - b of two predictors' item scores (each a (per-annotator predictions,
    soft labels or None) pair, as `score` takes them) and its percentile interval over `reps` resamples of the
    items, the same resample for both (paired); negative = a is better. Every official measure is a mean over
    items, so an item resample is a resample of the score. The same seed gives every measure the same resample."""
    score_a, score_b = item_scores(items, *a), item_scores(items, *b)
    out = {}
    for key in score_a.keys() & score_b.keys():
        est = mean_interval(score_a[key] - score_b[key], seed=seed, n_resamples=reps, level=level)
        out[key] = {"difference": est.mean, "low": est.low, "high": est.high, "share_a_better": est.share_below_zero}
    return dict(sorted(out.items()))
