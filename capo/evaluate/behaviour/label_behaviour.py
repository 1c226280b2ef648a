"""Label behaviour from probabilities: does an annotator-specific explainer's label distribution match its annotator?

For one explainer of one target annotator, `predicted` maps item id -> probability vector over the task's labels (in
`capo.data.schema.label_space(task).labels` order); `human` maps (item id, annotator) -> that annotator's labels on
the item (several where the annotator annotated the item more than once, e.g. VariErr NLI). On the held-out items
both cover:
- `marginal_js`: Jensen-Shannon distance, base 2, between the expected label marginal (mean predicted vector) and
  the target's empirical marginal, where each item weighs 1: per item the normalised count vector of the target's
  labels, averaged over items;
- `loglik`: per item the mean natural-log probability of each of the target's labels (probabilities clipped at
  EPS = 1e-6 first), averaged over items;
- `agreement`: per item the predicted mass on the set of labels the target gave, averaged over items.
Intervals are item-level bootstraps (`capo.evaluate.intervals`: percentile, 1000 resamples, seeded).
`reference_bands` scores the same measures for real-annotator, split-half, uniform and one-label predictors, so a
number can be read against them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy.spatial.distance import jensenshannon

from capo.data.schema import TASKS, LabelSpace
from capo.errors import DataError
from capo.evaluate.intervals import mean_interval

EPS = 1e-6  # floor on a probability before its log
SUM_TOLERANCE = 1e-4  # a predicted vector must sum to 1 within this
SMOOTHING = 0.1  # weight of the uniform in an other annotator's smoothed per-item distribution
N_SPLITS = 20  # seeded split-half repetitions
N_RESAMPLES = 1000  # bootstrap resamples
CONFIDENCE = 0.95
MEASURES = ("marginal_js", "loglik", "agreement")
PER_ITEM = ("loglik", "agreement")  # measures with one value per item (bootstrap-able)

Labels = LabelSpace | Sequence[str]
Human = Mapping[tuple[str, str], Sequence[str]]


def _normaliser(labels: Labels) -> tuple[tuple[str, ...], Callable[[str], str]]:
    """Label order and a spelling normaliser: a task's own (e.g. "+3" -> "3") where `labels` is a task's space."""
    if isinstance(labels, LabelSpace):
        space: LabelSpace | None = labels
    else:
        space = next((s for s in TASKS.values() if s.labels == tuple(labels)), None)
    if space is not None:
        return space.labels, space.normalise
    order = tuple(str(label) for label in labels)

    def exact(label: str) -> str:
        if str(label) not in order:
            raise ValueError(f"unknown label {label!r} (valid: {', '.join(order)})")
        return str(label)

    return order, exact


def _distribution(raw: Sequence[str], order: tuple[str, ...], norm: Callable[[str], str], item: str,
                  annotator: str) -> np.ndarray:
    """Normalised count vector of one annotator's labels on one item (each item weighs 1 whatever the count)."""
    counts = np.zeros(len(order))
    for label in raw:
        try:
            counts[order.index(norm(label))] += 1
        except ValueError as err:
            raise DataError(f"annotator {annotator}: {err}", item=str(item), field="label") from None
    return counts / counts.sum()


def _human_distributions(human: Human, annotator: str, order: tuple[str, ...],
                         norm: Callable[[str], str]) -> dict[str, np.ndarray]:
    """item id -> the annotator's per-item label distribution, for items where it gave at least one label."""
    return {item: _distribution(raw, order, norm, item, annotator)
            for (item, who), raw in human.items() if who == annotator and len(raw) > 0}


def _check_vector(item: str, vector: Sequence[float], k: int) -> np.ndarray:
    """A predicted vector as an array; a DataError when its length, range or sum is wrong."""
    p = np.asarray(vector, dtype=float).reshape(-1)
    if p.size != k:
        raise DataError(f"probability vector has {p.size} entries, the label space has {k}", item=str(item),
                        field="predicted")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise DataError("probabilities must be finite and non-negative", item=str(item), field="predicted")
    if abs(p.sum() - 1.0) > SUM_TOLERANCE:
        raise DataError(f"probabilities sum to {p.sum():.6f}, not 1 (tolerance {SUM_TOLERANCE})", item=str(item),
                        field="predicted")
    return p


def _item_scores(p: np.ndarray, q: np.ndarray) -> tuple[float, float]:
    """(loglik, agreement) of prediction p against the target's per-item distribution q."""
    loglik = float(np.sum(q * np.log(np.maximum(p, EPS))))  # = mean log-prob over the target's labels
    agreement = float(p[q > 0].sum())
    return loglik, agreement


def _measures(preds: Mapping[str, np.ndarray], targets: Mapping[str, np.ndarray], items: Sequence[str]) -> dict:
    """The three measures of constant-shape predictions `preds` against `targets` on `items`."""
    scores = np.array([_item_scores(preds[i], targets[i]) for i in items])
    p_marg = np.mean([preds[i] for i in items], axis=0)
    q_marg = np.mean([targets[i] for i in items], axis=0)
    return {"marginal_js": float(jensenshannon(p_marg, q_marg, base=2)), "loglik": float(scores[:, 0].mean()),
            "agreement": float(scores[:, 1].mean()), "n_items": len(items)}


def _overlap(predicted: Mapping[str, Sequence[float]], human: Human, target: str,
             labels: Labels) -> tuple[tuple[str, ...], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(label order, validated predictions, target distributions) on the items both cover; DataError if none."""
    order, norm = _normaliser(labels)
    targets = _human_distributions(human, target, order, norm)
    items = [i for i in predicted if i in targets]
    if not items:
        raise DataError(f"no item has both a prediction and a label by annotator {target!r} "
                        f"({len(predicted)} predicted items, {len(targets)} items labelled by {target!r})")
    preds = {i: _check_vector(i, predicted[i], len(order)) for i in items}
    return order, preds, {i: targets[i] for i in items}


def per_item_scores(predicted: Mapping[str, Sequence[float]], human: Human, target: str,
                    labels: Labels) -> dict[str, dict]:
    """Per-item loglik and agreement (and the vectors they come from), so callers can bootstrap or inspect items.

    Returns item id -> {"loglik", "agreement", "predicted", "target_distribution", "n_labels"}.
    """
    _, preds, targets = _overlap(predicted, human, target, labels)
    out = {}
    for item, p in preds.items():
        loglik, agreement = _item_scores(p, targets[item])
        n_labels = len(human[(item, target)])
        out[item] = {"loglik": loglik, "agreement": agreement, "predicted": p.tolist(),
                     "target_distribution": targets[item].tolist(), "n_labels": n_labels}
    return out


def _interval(values: np.ndarray, seed: int) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over items; NaN where fewer than two items."""
    est = mean_interval(values, seed=seed, n_resamples=N_RESAMPLES, level=CONFIDENCE)
    return est.low, est.high


def label_behaviour(predicted: Mapping[str, Sequence[float]], human: Human, target: str, labels: Labels,
                    seed: int = 0) -> dict:
    """The three measures of one explainer against its target, with item-bootstrap intervals for the per-item ones.

    Returns {"target", "n_items", "items", "marginal_js", "loglik", "agreement", "loglik_ci_low",
    "loglik_ci_high", "agreement_ci_low", "agreement_ci_high", "eps", "confidence", "n_resamples", "seed"}.
    """
    _, preds, targets = _overlap(predicted, human, target, labels)
    items = sorted(preds)
    out = {"target": target, "items": items, **_measures(preds, targets, items)}
    for measure in PER_ITEM:
        values = np.array([_item_scores(preds[i], targets[i])[PER_ITEM.index(measure)] for i in items])
        out[f"{measure}_ci_low"], out[f"{measure}_ci_high"] = _interval(values, seed)
    return {**out, "eps": EPS, "confidence": CONFIDENCE, "n_resamples": N_RESAMPLES, "seed": seed}


def _summary(per: Mapping[str, dict]) -> dict:
    """min / mean / max of each measure over the entries of `per`."""
    return {m: {"min": min(v[m] for v in per.values()), "mean": float(np.mean([v[m] for v in per.values()])),
                "max": max(v[m] for v in per.values())} for m in MEASURES}


def reference_bands(human: Human, target: str, labels: Labels, items: Sequence[str], seed: int = 0) -> dict:
    """The measures of reference predictors of `target` on `items`, the scale an explainer's numbers are read on.

    - "other_annotators": each other annotator's per-item label distribution, mixed with the uniform at weight
      SMOOTHING = 0.1, on the items both labelled; per annotator, and min / mean / max over annotators (None if no
      other annotator shares an item);
    - "split_half": the target's marginal on a seeded random half of the items as a constant prediction on the
      other half (marginal_js: between the two halves' marginals), averaged over N_SPLITS = 20 splits (None below
      two items);
    - "uniform": the constant uniform prediction;
    - "one_label": each label's constant one-hot prediction (floored at EPS before the log like every
      prediction), and the best by marginal_js (lowest) and by loglik (highest), with the label.
    """
    order, norm = _normaliser(labels)
    k = len(order)
    all_targets = _human_distributions(human, target, order, norm)
    items = sorted({i for i in items if i in all_targets})
    if not items:
        raise DataError(f"none of the given items is labelled by annotator {target!r}")
    targets = {i: all_targets[i] for i in items}
    uniform = np.full(k, 1.0 / k)

    others = {}
    for other in sorted({who for (_, who) in human if who != target}):
        dists = _human_distributions(human, other, order, norm)
        shared = [i for i in items if i in dists]
        if shared:
            preds = {i: (1 - SMOOTHING) * dists[i] + SMOOTHING * uniform for i in shared}
            others[other] = _measures(preds, targets, shared)
    other_band = {"per_annotator": others, **_summary(others)} if others else None

    split_band = None
    if len(items) >= 2:
        rng = np.random.default_rng(seed)
        runs = []
        for _ in range(N_SPLITS):
            perm = rng.permutation(len(items))
            half_a, half_b = [items[j] for j in perm[: len(items) // 2]], [items[j] for j in perm[len(items) // 2:]]
            marg_a = np.mean([targets[i] for i in half_a], axis=0)
            run = _measures({i: marg_a for i in half_b}, targets, half_b)
            run["marginal_js"] = float(jensenshannon(marg_a, np.mean([targets[i] for i in half_b], axis=0), base=2))
            runs.append(run)
        split_band = {m: float(np.mean([r[m] for r in runs])) for m in MEASURES}
        split_band.update(n_splits=N_SPLITS, n_items_fit=len(items) // 2, n_items_scored=len(items) - len(items) // 2)

    one_label = {label: _measures({i: np.eye(k)[j] for i in items}, targets, items) for j, label in enumerate(order)}
    best_js = min(order, key=lambda label: one_label[label]["marginal_js"])
    best_ll = max(order, key=lambda label: one_label[label]["loglik"])
    return {
        "target": target, "n_items": len(items), "eps": EPS, "smoothing": SMOOTHING, "seed": seed,
        "other_annotators": other_band,
        "split_half": split_band,
        "uniform": _measures({i: uniform for i in items}, targets, items),
        "one_label": {"per_label": one_label,
                      "best_marginal_js": {"label": best_js, "value": one_label[best_js]["marginal_js"]},
                      "best_loglik": {"label": best_ll, "value": one_label[best_ll]["loglik"]}},
    }


def paired_difference(pred_a: Mapping[str, Sequence[float]], pred_b: Mapping[str, Sequence[float]], human: Human,
                      target: str, labels: Labels, measure: str, seed: int = 0) -> dict:
    """Mean per-item difference a - b of `measure` ("loglik" or "agreement") on the items both explainers and the
    target cover, with a paired item bootstrap interval: the comparison (e.g. CAPO - SFT) resamples the same items
    for both, so item difficulty cancels.

    Returns {"measure", "estimate", "ci_low", "ci_high", "n_items", "confidence", "n_resamples", "seed"}.
    """
    if measure not in PER_ITEM:
        raise DataError(f"unknown per-item measure {measure!r} (valid: {', '.join(PER_ITEM)})")
    shared = {i: pred_a[i] for i in pred_a if i in pred_b}
    if not shared:
        raise DataError("the two explainers share no predicted item")
    a = per_item_scores(shared, human, target, labels)
    b = per_item_scores({i: pred_b[i] for i in a}, human, target, labels)
    items = sorted(a)
    va = np.array([a[i][measure] for i in items])
    vb = np.array([b[i][measure] for i in items])
    low, high = _interval(va - vb, seed)  # paired: the mean of per-item differences, items resampled once
    return {"measure": measure, "estimate": float(np.mean(va - vb)), "ci_low": low, "ci_high": high,
            "n_items": len(items), "confidence": CONFIDENCE, "n_resamples": N_RESAMPLES, "seed": seed}
