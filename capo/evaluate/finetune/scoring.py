"""Scoring fine-tuned predictions: the comparison metrics, the `Trainer` metric hook, constant predictors."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from capo.evaluate.distributions.metrics import distribution_report
from capo.evaluate.finetune.data import Example

# Metrics in the order tables print them; lower is better for all but the classification scores.
METRICS = ("accuracy", "macro_f1", "weighted_f1", "soft_ce", "kl", "kl_torch_mean", "jsd", "tvd")
HIGHER_IS_BETTER = {"accuracy", "macro_f1", "weighted_f1"}


def score(human, predicted) -> dict[str, float]:
    """Every metric of the comparison table for predictions (rows = items) against the HJDs (no dcorr: the papers'
    fine-tuning tables do not report it)."""
    h, m = np.asarray(human, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
    report = distribution_report(h, m, classification=True, dcorr=False)
    return {name: report[name] for name in METRICS}


def softmax_logits(logits) -> np.ndarray:
    """Predicted distributions from a model's logits (the first output when the model returns a tuple)."""
    from scipy.special import softmax

    logits = logits[0] if isinstance(logits, tuple) else logits
    return softmax(np.asarray(logits, dtype=np.float64), axis=-1)


def compute_metrics(eval_pred) -> dict[str, float]:
    """`Trainer` hook: softmax the logits and score them against the target distributions."""
    return score(eval_pred.label_ids, softmax_logits(eval_pred.predictions))


def constant_scores(train: Sequence[Example], evaluated: Sequence[Example]) -> dict[str, dict[str, float]]:
    """The two constant predictors on the evaluated items: uniform, and the training targets' mean distribution."""
    human = np.array([e.distribution for e in evaluated])
    mean = np.array([e.distribution for e in train]).mean(axis=0)
    return {
        "uniform": score(human, np.full_like(human, 1 / human.shape[1])),
        "train_mean": score(human, np.tile(mean, (len(human), 1))),
    }
