"""Calibrated MJDs (beyond the papers): the softmax temperature fitted to the human judgment distributions by
cross-fitting, so no item's own HJD shapes the temperature applied to it.

From an MJD run's raw letter scores (`recipes/mjd.py --save_raw_scores true`), each prompt's scores are put back in
label order and MJD(T) = mean over the item's prompts of softmax(scores / T). T is fitted on four folds by minimising
the mean KL(HJD || MJD(T)) over log T, and applied to the fifth.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import softmax

from capo.data.schema import NLI
from capo.errors import DataError
from capo.evaluate.metrics import kl_per_item


def label_scores(raw_rows: Sequence[Mapping]) -> dict[str, np.ndarray]:
    """item id -> (prompts x labels) raw scores in label order, from raw_scores.jsonl rows."""
    out = {}
    for row in raw_rows:
        item = str(row.get("id"))
        prompts = row.get("prompts")
        if not isinstance(prompts, list) or not prompts:
            raise DataError("no per-prompt scores (run recipes/mjd.py with --save_raw_scores true)", item=item,
                            field="prompts")
        rows = []
        for k, prompt in enumerate(prompts):
            options, scores = str(prompt.get("options", "")), prompt.get("letter_scores")
            order = [NLI.short.index(letter.lower()) for letter in options if letter.lower() in NLI.short]
            if len(order) != len(NLI) or sorted(order) != list(range(len(NLI))) or not isinstance(scores, list) \
                    or len(scores) != len(NLI):
                raise DataError("expected 'options' (a permutation of E, N, C) and 3 'letter_scores'", item=item,
                                field=f"prompts[{k}]")
            by_label = np.empty(len(NLI))
            by_label[order] = scores  # letter position i shows label order[i]
            rows.append(by_label)
        out[item] = np.asarray(rows)
    return out


def top_letter_shares(raw_rows: Sequence[Mapping]) -> dict[str, float]:
    """Share of prompts whose highest letter score sits at each answer position (A, B, C): a position bias that
    averaging over the 6 option orders cancels, leaving an MJD near uniform however confident each prompt is."""
    tops = [int(np.argmax(prompt["letter_scores"])) for row in raw_rows for prompt in row.get("prompts", [])
            if isinstance(prompt.get("letter_scores"), list) and len(prompt["letter_scores"]) == len(NLI)]
    counts = np.bincount(tops, minlength=len(NLI)) / max(len(tops), 1)
    return {letter: float(share) for letter, share in zip("ABC", counts)}


def mjd_at(scores: np.ndarray, temperature: float) -> np.ndarray:
    """One item's MJD at `temperature` from its (prompts x labels) scores."""
    return softmax(scores / temperature, axis=-1).mean(axis=0)


def mean_kl(scores: Sequence[np.ndarray], human: np.ndarray, temperature: float) -> float:
    return float(kl_per_item(human, np.array([mjd_at(s, temperature) for s in scores])).mean())


def fit_temperature(scores: Sequence[np.ndarray], human: np.ndarray) -> float:
    """The T (searched over log T in [e^-4, e^7]) that minimises mean KL(HJD || MJD(T))."""
    res = minimize_scalar(lambda log_t: mean_kl(scores, human, float(np.exp(log_t))), bounds=(-4.0, 7.0),
                          method="bounded", options={"xatol": 1e-4})
    return float(np.exp(res.x))


def crossfit(ids: Sequence[str], scores: Mapping[str, np.ndarray], human: Mapping[str, Sequence[float]], *,
             folds: int = 5, seed: int = 0) -> tuple[dict[str, list[float]], list[float]]:
    """Calibrated MJDs for `ids` (each from a T fitted on the other folds) and the fitted T of each fold."""
    from sklearn.model_selection import KFold

    missing = [i for i in ids if i not in scores or i not in human]
    if missing:
        raise DataError("item lacks raw scores or a human distribution", item=missing[0])
    ids = list(ids)
    out, temperatures = {}, []
    for train, test in KFold(folds, shuffle=True, random_state=seed).split(ids):
        t = fit_temperature([scores[ids[i]] for i in train], np.array([human[ids[i]] for i in train]))
        temperatures.append(t)
        for i in test:
            out[ids[i]] = [float(x) for x in mjd_at(scores[ids[i]], t)]
    return {i: out[i] for i in ids}, temperatures
