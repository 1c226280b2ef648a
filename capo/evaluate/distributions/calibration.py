"""Calibrated MJDs (beyond the papers): the softmax temperature fitted to the human judgment distributions by
cross-fitting, so no item's own HJD shapes the temperature applied to it.

From an MJD run's raw letter scores (`recipes/mjd.py --save_raw_scores true`, read by
`capo.mjd.estimate.read_raw_scores`), each prompt's scores are put back in label order and MJD(T) = mean over the
item's prompts of softmax(scores / T). T is fitted on four folds by minimising the mean KL(HJD || MJD(T)) over log
T, and applied to the fifth. `calibrate` is what `eval/calibrate.py` runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import softmax

from capo.data.schema import NLI
from capo.errors import DataError
from capo.evaluate.distributions.metrics import kl_per_item
from capo.mjd.estimate import read_raw_scores


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


@dataclass
class CalibrateArguments:
    """Arguments of `eval/calibrate.py`."""

    raw: str = field(metadata={"help": "raw_scores.jsonl of an MJD run (recipes/mjd.py --save_raw_scores true)"})
    human: str = field(metadata={"help": "human distribution JSONL (id, distribution)"})
    folds: int = field(default=5, metadata={"help": "cross-fitting folds (at least 2)"})
    seed: int = field(default=0, metadata={"help": "seed of the fold split"})
    json: bool = field(default=False, metadata={"help": "print the report as JSON"})
    output: str | None = field(default=None, metadata={"help": "write the calibrated MJDs (id, distribution)"})
    report: str | None = field(default=None, metadata={"help": "also write the report as JSON"})
    allow_partial: bool = field(default=False, metadata={
        "help": "calibrate the raw items that the human file has, when it lacks some"})

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise DataError(f"need at least 2 folds, got {self.folds}", field="--folds")


def calibrate(args: CalibrateArguments) -> dict:
    """The calibration report of one MJD run — KL, JS distance, TVD and distance correlation at T = 1, T = 20 and
    the cross-fitted T (`rows`), the T of each fold and their mean, the top-letter shares, on how many of the raw
    items (`items`, `raw_items`) — with the calibrated MJDs written to `args.output` and the report to
    `args.report` when given. The human file must cover every raw item unless `allow_partial`."""
    from capo.data.distributions import read_distributions, write_distributions
    from capo.evaluate.distributions.compare import covered
    from capo.evaluate.distributions.metrics import distribution_report
    from capo.io import check_output, write_json

    for path in (args.output, args.report):
        if path:
            check_output(path)
    scores, raw = read_raw_scores(args.raw)
    human = read_distributions(args.human)
    ids = covered(scores, human, reference_name=args.raw, covering_name=args.human, allow_partial=args.allow_partial)
    if len(ids) < args.folds:
        raise DataError(f"only {len(ids)} items have both raw scores and a human distribution; cross-fitting over "
                        f"{args.folds} folds needs at least {args.folds} items", path=args.raw)
    calibrated, temperatures = crossfit(ids, scores, human, folds=args.folds, seed=args.seed)
    h = np.array([human[i] for i in ids])
    rows = {f"T={t:g}": distribution_report(h, np.array([mjd_at(scores[i], t) for i in ids])) for t in (1.0, 20.0)}
    rows["T=cross-fitted"] = distribution_report(h, np.array([calibrated[i] for i in ids]))
    report = {"items": len(ids), "raw_items": len(scores), "fold_temperatures": temperatures,
              "temperature_mean": float(np.mean(temperatures)), "top_letter_shares": top_letter_shares(raw),
              "rows": rows}
    if args.output:
        write_distributions(args.output, calibrated)
    if args.report:
        write_json(args.report, report)
    return report


def format_report(report: Mapping) -> str:
    """`calibrate`'s report as the lines `eval/calibrate.py` prints: items, fold temperatures, top-letter shares, and
    one line of metrics per temperature."""
    temperatures = ", ".join(f"{t:.2f}" for t in report["fold_temperatures"])
    shares = ", ".join(f"{k} {v:.3f}" for k, v in report["top_letter_shares"].items())
    return "\n".join([f"{report['items']} of {report['raw_items']} items; fitted T per fold: {temperatures}",
                      f"prompts whose top letter is {shares}",
                      *(f"{name:>16}: " + ", ".join(f"{k} {v:.4f}" for k, v in r.items())
                        for name, r in report["rows"].items())])
