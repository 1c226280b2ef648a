"""Distribution metrics exactly as the MJD papers compute them, plus the LeWiDi 2025 metrics.

Rows are items, columns labels in label-space order ([E, N, C] for NLI). h = human, m = model.
- KL(h||m) and the Jensen-Shannon *distance*: both inputs clipped to [1e-10, 1] and renormalised, natural log.
- TVD = 1/2 L1. Per-item values; reported as the mean over items.
- Distance correlation (dcor) between the N x 3 matrices: a global metric.
- Classification against argmax(h) with scikit-learn (the `evaluate` hub metrics are not reachable offline).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr
from scipy.stats import wasserstein_distance

EPS = 1e-10


def _as_2d(p) -> np.ndarray:
    array = np.asarray(p, dtype=np.float64)
    return array[None, :] if array.ndim == 1 else array


def clip_renormalise(p) -> np.ndarray:
    clipped = np.clip(_as_2d(p), EPS, 1.0)
    return clipped / clipped.sum(axis=1, keepdims=True)


def kl_per_item(h, m) -> np.ndarray:
    """KL(h || m) per row, natural log, after clipping both to [1e-10, 1] and renormalising."""
    return rel_entr(clip_renormalise(h), clip_renormalise(m)).sum(axis=1)


def kl_torch_mean(h, m) -> np.ndarray:
    """What the papers' code printed as "KL": torch `kl_div(log m, h, reduction="mean")` averages over the
    label axis too, so it is KL / n_labels. Offered under its own name so it is never mistaken for KL."""
    return kl_per_item(h, m) / _as_2d(h).shape[1]


def js_distance_per_item(h, m) -> np.ndarray:
    """Jensen-Shannon distance (square root of the JS divergence), natural log, same clipping."""
    return jensenshannon(clip_renormalise(h), clip_renormalise(m), axis=1)


def tvd_per_item(h, m) -> np.ndarray:
    return 0.5 * np.abs(_as_2d(h) - _as_2d(m)).sum(axis=1)


def soft_cross_entropy_per_item(h, m) -> np.ndarray:
    """-sum_k h_k log m_k, with m clipped like the other metrics."""
    return -(_as_2d(h) * np.log(clip_renormalise(m))).sum(axis=1)


def distance_correlation(h, m) -> float:
    """dcor between the human and model matrices; 0 when either is constant (dcor defines it so)."""
    import dcor

    h, m = _as_2d(h), _as_2d(m)
    if np.allclose(h, h[0]) or np.allclose(m, m[0]):
        return 0.0
    return float(dcor.distance_correlation(h, m))


def classification_metrics(h, m) -> dict[str, float]:
    """Accuracy, macro-F1 and weighted-F1 of argmax(m) against argmax(h)."""
    from sklearn.metrics import accuracy_score, f1_score

    gold, pred = _as_2d(h).argmax(axis=1), _as_2d(m).argmax(axis=1)
    labels = list(range(_as_2d(h).shape[1]))
    return {
        "accuracy": float(accuracy_score(gold, pred)),
        "macro_f1": float(f1_score(gold, pred, labels=labels, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(gold, pred, labels=labels, average="weighted", zero_division=0)),
    }


def distribution_report(h, m, *, classification: bool = False, dcorr: bool = True) -> dict[str, float]:
    """The papers' table row: mean KL, JS distance, TVD over items, and the global distance correlation (`dcorr`
    False leaves it out: the fine-tuning tables do not report it, and importing dcor/numba costs seconds)."""
    h, m = _as_2d(h), _as_2d(m)
    if h.shape != m.shape:
        raise ValueError(f"human and model matrices differ in shape: {h.shape} vs {m.shape}")
    report = {
        "kl": float(kl_per_item(h, m).mean()),
        "jsd": float(js_distance_per_item(h, m).mean()),
        "tvd": float(tvd_per_item(h, m).mean()),
    }
    if dcorr:
        report["dcorr"] = distance_correlation(h, m)
    if classification:
        report |= classification_metrics(h, m)
        report["soft_ce"] = float(soft_cross_entropy_per_item(h, m).mean())
        report["kl_torch_mean"] = float(kl_torch_mean(h, m).mean())
    return report


# --- LeWiDi 2025 (lower is better for all four) ----------------------------------------------------------------


def lewidi_paraphrase_soft(target, pred) -> float:
    """Mean Wasserstein (earth mover's) distance over the 11 ordered Likert bins, unit spacing."""
    bins = np.arange(_as_2d(target).shape[1])
    return float(
        np.mean([wasserstein_distance(bins, bins, t, p) for t, p in zip(_as_2d(target), _as_2d(pred))])
    )


def lewidi_paraphrase_perspectivist(targets: list[list[int]], preds: list[list[int]]) -> float:
    """Mean over items of mean_a |target_a - pred_a| / 11 (11 scale points, as the official scorer)."""
    return float(np.mean([np.mean(np.abs(np.subtract(t, p))) / 11 for t, p in zip(targets, preds)]))


def lewidi_nli_soft(target_presence, pred_presence) -> float:
    """Multilabel average Manhattan distance: per label, L1 between [1-p, p] pairs (= 2|p - p'|), averaged."""
    t, p = _as_2d(target_presence), _as_2d(pred_presence)
    return float(np.mean(np.mean(2 * np.abs(t - p), axis=1)))


def lewidi_nli_perspectivist(targets: list[list[list[int]]], preds: list[list[list[int]]]) -> float:
    """Multilabel error rate: per item and label, the share of annotator positions predicted wrong (0/1), with
    the official `zip` pairing (extra predictions ignored, denominator = the target's length)."""
    per_item = []
    for target_item, pred_item in zip(targets, preds):
        per_label = [
            sum(tv != pv for tv, pv in zip(t_vec, p_vec)) / len(t_vec) for t_vec, p_vec in zip(target_item, pred_item)
        ]
        per_item.append(np.mean(per_label))
    return float(np.mean(per_item))
