"""Calibrated MJDs (beyond the papers): the softmax temperature fitted to the human judgment distributions by
cross-fitting, so no item's own HJD shapes the temperature applied to it.

From an MJD run's raw letter scores (`recipes/mjd.py --save_raw_scores true`), each prompt's scores are put back in
label order and MJD(T) = mean over the item's prompts of softmax(scores / T). T is fitted on four folds by minimising
the mean KL(HJD || MJD(T)) over log T, and applied to the fifth.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import softmax

from capo.data.formats.common import row_id
from capo.data.schema import NLI
from capo.errors import DataError
from capo.evaluate.distributions.metrics import kl_per_item
from capo.io import iter_jsonl


def _row_scores(row: Mapping, where: dict) -> np.ndarray:
    """One raw_scores.jsonl row's (prompts x labels) scores in label order; `where` locates errors."""
    prompts = row.get("prompts")
    if not isinstance(prompts, list) or not prompts:
        raise DataError("no per-prompt scores (run recipes/mjd.py with --save_raw_scores true)", field="prompts",
                        **where)
    rows = []
    for k, prompt in enumerate(prompts):
        prompt = prompt if isinstance(prompt, Mapping) else {}
        options, scores = str(prompt.get("options", "")), prompt.get("letter_scores")
        order = [NLI.short.index(letter.lower()) for letter in options if letter.lower() in NLI.short]
        if len(order) != len(NLI) or sorted(order) != list(range(len(NLI))) or not isinstance(scores, list) \
                or len(scores) != len(NLI):
            raise DataError("expected 'options' (a permutation of E, N, C) and 3 'letter_scores'",
                            field=f"prompts[{k}]", **where)
        if not all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in scores):
            # recipes/mjd.py never writes one: a NaN would turn the item's calibrated distribution into NaNs
            raise DataError(f"expected 3 finite numbers, got {scores}", field=f"prompts[{k}].letter_scores", **where)
        by_label = np.empty(len(NLI))
        by_label[order] = scores  # letter position i shows label order[i]
        rows.append(by_label)
    return np.asarray(rows)


def label_scores(raw_rows: Sequence[Mapping]) -> dict[str, np.ndarray]:
    """item id -> (prompts x labels) raw scores in label order, from raw_scores.jsonl rows."""
    return {str(row.get("id")): _row_scores(row, {"item": str(row.get("id"))}) for row in raw_rows}


def read_raw_scores(path: str | Path) -> tuple[dict[str, np.ndarray], list[dict]]:
    """(`label_scores`, the rows) of a raw_scores.jsonl, each row checked where it stands (file:line, item, field):
    an id (a row without one is refused, not dropped), once, and finite per-prompt scores."""
    scores: dict[str, np.ndarray] = {}
    rows = []
    for line, row in iter_jsonl(path):
        where = {"path": str(path), "line": line}
        item = row_id(row, where, scores)
        scores[item] = _row_scores(row, {**where, "item": item})
        rows.append(row)
    if not rows:
        raise DataError("no raw scores in file", path=str(path))
    return scores, rows


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
