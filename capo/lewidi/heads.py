"""Per-annotator heads on fixed pair features for the LeWiDi 2025 perspectivist track (issue 28).

Each annotator is consistent and few (4 per data set), so instead of one encoder reading an `[ANNk]` token, every
annotator gets their own small model on the pair features of `capo.lewidi.features` (MiniLM cosine, lexical
overlap, PCA of |u - v| and u * v):

- Par: an ordinal model over -5..5 by cumulative binary decomposition: one logistic regression per cut k
  (P(label > k), k = -5..4), made monotone, differenced into an 11-point distribution.
- VEN: one logistic regression per (label, annotator) on the items that annotator labelled: P(label in the set).

Decisions are the Bayes decisions of the official measures under those distributions, nothing fitted on dev:
- Par perspectivist (absolute distance): each annotator's median.
- VEN perspectivist (per-label 0/1 error): label in the set iff p > 1/2 (at exactly 1/2 both are optimal).
- Soft labels (`bayes_soft`): the gold soft label is the share of the item's annotators giving each label (VEN) or
  point (Par, through its CDF), and both soft measures are absolute differences of those shares (VEN: 2|p - s| per
  label; Par: Wasserstein = the sum over points of |CDF_pred - CDF_gold|). So the minimiser is, per label (per CDF
  point), the **median** of the share under the annotators' predictive distributions (taken as independent: a
  Poisson-binomial count / a), not their mean; `soft_mean` writes the mean beside it.

The annotators are not independent given the features (an item hard for one is hard for all), so the soft rule
(SOFT_RULES: that median, the shares of the hard decisions, or the mean) is chosen with the regularisation C by
K-fold cross-fitting on the train split (`choose_on_train`; seeds vary the folds, logistic regression itself is
deterministic given the features). Nothing is fitted on dev or test; training uses the train split only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from capo.data.formats.lewidi import PAR_LABELS, VEN_LABELS, LewidiItem
from capo.errors import DataError
from capo.evaluate.finetune.arguments import default_model_path
from capo.io import write_json
from capo.lewidi.features import FeatureMap, split_embeddings
from capo.lewidi.outputs import write_split
from capo.lewidi.perspectivist import annotator_rows, decide, mean_soft, read_run_splits, start_run
from capo.lewidi.predictions import AnnotatorPredictions, SoftPredictions, aggregate_soft
from capo.lewidi.score import score

C_GRID: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0)
CV_FOLDS = 5
# Soft-label rules: bayes (the median share, optimal if the annotators were independent given the features),
# aggregated (shares of the annotators' hard decisions, as the organisers aggregate), mean (mean probabilities).
SOFT_RULES: tuple[str, ...] = ("bayes", "aggregated", "mean")


def _binary(x: np.ndarray, target: np.ndarray, c: float):
    """A fitted logistic regression, or the constant share when the target has one value only."""
    from sklearn.linear_model import LogisticRegression

    if target.min() == target.max():
        return float(target[0])
    return LogisticRegression(C=c, max_iter=2000).fit(x, target)


def _p1(model, x: np.ndarray) -> np.ndarray:
    return np.full(len(x), model) if isinstance(model, float) else model.predict_proba(x)[:, 1]


def ordinal_pmf(cuts: Sequence, x: np.ndarray) -> np.ndarray:
    """(n, 11) distributions over -5..5 from the 10 cumulative models P(label > k), k = -5..4."""
    above = np.column_stack([_p1(model, x) for model in cuts])
    above = np.minimum.accumulate(above, axis=1)  # P(label > k) cannot grow with k
    survival = np.hstack([np.ones((len(x), 1)), above, np.zeros((len(x), 1))])
    return survival[:, :-1] - survival[:, 1:]


@dataclass
class AnnotatorHeads:
    """One model per annotator (Par: ordinal; VEN: one binary per label), fitted on the items they labelled."""

    dataset: str
    c: float = 0.1

    def fit(self, items: Sequence[LewidiItem], x: np.ndarray) -> AnnotatorHeads:
        self.models: dict[str, list] = {}
        for annotator in sorted({a for item in items for a in item.annotators}):
            own = [k for k, item in enumerate(items) if annotator in item.annotators]
            given = [items[k].labels[annotator] for k in own]
            if self.dataset == "par":
                points = np.array([g[0] for g in given])
                targets = [(points > cut).astype(int) for cut in PAR_LABELS[:-1]]
            else:
                targets = [np.array([label in g for g in given], dtype=int) for label in VEN_LABELS]
            self.models[annotator] = [_binary(x[own], t, self.c) for t in targets]
        return self

    def predict(self, items: Sequence[LewidiItem], x: np.ndarray) -> np.ndarray:
        """Probabilities for every (item, annotator) row of `annotator_rows(items)`, in that order."""
        missing = next((a for item in items for a in item.annotators if a not in self.models), None)
        if missing is not None:
            raise DataError(f"annotator {missing} has no training labels", field="annotator")
        per = {a: (ordinal_pmf(models, x) if self.dataset == "par"
                   else np.column_stack([_p1(m, x) for m in models])) for a, models in self.models.items()}
        return np.array([per[a][k] for k, item in enumerate(items) for a in item.annotators])


# --- decisions -------------------------------------------------------------------------------------------------


def median_share(probs: Sequence[float]) -> float:
    """The median of K / a, K the number of successes of a independent Bernoulli(p) (a Poisson-binomial count):
    the smallest share whose CDF reaches 1/2."""
    pmf = np.array([1.0])
    for p in probs:
        pmf = np.convolve(pmf, [1 - p, p])
    k = int(np.searchsorted(np.cumsum(pmf), 0.5 - 1e-12))
    return k / len(probs)


def bayes_soft(items: Sequence[LewidiItem], rows: Sequence[dict], probs: np.ndarray) -> SoftPredictions:
    """The soft label minimising the expected official soft score: VEN, per label the median share; Par, the
    distribution whose CDF at each point is the median share of annotators at or below it (monotone in the
    point, so a distribution)."""
    by_item: dict[str, list[np.ndarray]] = {}
    for row, p in zip(rows, probs):
        by_item.setdefault(row["id"], []).append(p)
    out: SoftPredictions = {}
    for item in items:
        given = np.array(by_item[item.id])
        if item.dataset == "ven":
            out[item.id] = {label: median_share(given[:, k]) for k, label in enumerate(VEN_LABELS)}
        else:
            cdf = np.cumsum(given, axis=1)
            median_cdf = np.array([median_share(cdf[:, k]) for k in range(len(PAR_LABELS) - 1)] + [1.0])
            out[item.id] = dict(zip(PAR_LABELS, np.diff(median_cdf, prepend=0.0).tolist()))
    return out


def bayes_decision(dataset: str):
    """The perspectivist decision the heads use: VEN threshold 1/2, Par the median."""
    return 0.5 if dataset == "ven" else "median"


# --- fitting ---------------------------------------------------------------------------------------------------


def crossfit_predictions(items: Sequence[LewidiItem], u: np.ndarray, v: np.ndarray, dataset: str, c: float, *,
                         folds: int = CV_FOLDS, seed: int = 0, components: int = 8) -> np.ndarray:
    """Probabilities for every (item, annotator) row of `items`, each item's from heads (and a feature map) fitted
    on the other folds only."""
    from sklearn.model_selection import KFold

    rows_of = np.cumsum([0] + [len(item.annotators) for item in items])
    out = np.zeros((rows_of[-1], len(VEN_LABELS) if dataset == "ven" else len(PAR_LABELS)))
    for fit, held in KFold(min(folds, len(items)), shuffle=True, random_state=seed).split(items):
        fit_items, held_items = [items[k] for k in fit], [items[k] for k in held]
        features = FeatureMap(components, seed).fit(fit_items, u[fit], v[fit])
        heads = AnnotatorHeads(dataset, c).fit(fit_items, features.transform(fit_items, u[fit], v[fit]))
        probs = heads.predict(held_items, features.transform(held_items, u[held], v[held]))
        at = 0
        for k in held:  # scatter back into split order
            n = rows_of[k + 1] - rows_of[k]
            out[rows_of[k]:rows_of[k + 1]] = probs[at:at + n]
            at += n
    return out


def soft_labels(rule: str, items: Sequence[LewidiItem], rows: Sequence[dict], probs: np.ndarray,
                predictions: AnnotatorPredictions) -> SoftPredictions:
    """The soft labels of a SOFT_RULES rule."""
    if rule == "bayes":
        return bayes_soft(items, rows, probs)
    return aggregate_soft(items, predictions) if rule == "aggregated" else mean_soft(items, rows, probs)


def choose_on_train(items: Sequence[LewidiItem], u: np.ndarray, v: np.ndarray, dataset: str, *, seed: int = 0,
                    components: int = 8, grid: Sequence[float] = C_GRID) -> tuple[float, str, dict]:
    """(C, soft rule, record): the C of `grid` whose cross-fitted predictions on `items` (the train split) score
    best on the official perspectivist measure (ties keep the smaller C), then the SOFT_RULES rule scoring best on
    the soft measure with that C's cross-fitted predictions (ties keep the earlier rule)."""
    rows = annotator_rows(items)
    scores, probs_of = {}, {}
    for c in grid:
        probs_of[c] = crossfit_predictions(items, u, v, dataset, c, seed=seed, components=components)
        scores[str(c)] = score(items, decide(rows, probs_of[c], dataset, bayes_decision(dataset)))["perspectivist"]
    best = min(grid, key=lambda c: scores[str(c)])
    predictions = decide(rows, probs_of[best], dataset, bayes_decision(dataset))
    soft = {rule: score(items, None, soft_labels(rule, items, rows, probs_of[best], predictions))["soft"]
            for rule in SOFT_RULES}
    rule = min(SOFT_RULES, key=soft.__getitem__)
    return best, rule, {"cv_perspectivist": scores, "cv_soft": soft}


# --- the run ---------------------------------------------------------------------------------------------------


class HeadsComponent:
    """The heads as one fit/predict component (`run_heads`, the stack): `fit(train items)` chooses C and the soft
    rule by cross-fitting on those items (`choose_on_train`), fits the feature map and the heads on all of them;
    `predict(items)` returns the probabilities of every row of `annotator_rows(items)`. Embeddings are computed once
    per split file (`split_embeddings`, cached under `cache`) and kept by item, so subsets of a split reuse them."""

    def __init__(self, dataset: str, model_path: str, cache: str | Path, *, seed: int = 0, components: int = 8,
                 log=print, embedded: dict | None = None) -> None:
        self.dataset, self.model_path, self.cache, self.seed, self.components, self.log = (
            dataset, model_path, cache, seed, components, log)
        # (item id, texts) -> (u, v); pass another component's to share its embeddings
        self.embedded: dict[tuple, tuple[np.ndarray, np.ndarray]] = {} if embedded is None else embedded
        self.record: dict = {}

    def embed(self, items: Sequence[LewidiItem]) -> tuple[np.ndarray, np.ndarray]:
        keys = [(item.id, item.inputs) for item in items]
        if any(key not in self.embedded for key in keys):
            u, v = split_embeddings(items, self.model_path, self.cache)
            self.embedded.update({key: (u[k], v[k]) for k, key in enumerate(keys)})
        return (np.array([self.embedded[key][0] for key in keys]), np.array([self.embedded[key][1] for key in keys]))

    def fit(self, items: Sequence[LewidiItem]) -> HeadsComponent:
        u, v = self.embed(items)
        c, soft_rule, cv = choose_on_train(items, u, v, self.dataset, seed=self.seed, components=self.components)
        self.log(f"C = {c}, soft labels: {soft_rule} (cross-fitted on train: {cv})")
        self.features = FeatureMap(self.components, self.seed).fit(items, u, v)
        self.heads = AnnotatorHeads(self.dataset, c).fit(items, self.features.transform(items, u, v))
        self.record = {"c": c, "soft_rule": soft_rule, **cv}
        return self

    def predict(self, items: Sequence[LewidiItem]) -> np.ndarray:
        return self.heads.predict(items, self.features.transform(items, *self.embed(items)))


def decision_of(script) -> tuple[object, str]:
    """The perspectivist decision and its source: the Bayes rule of the measure, or a fixed `--ven_threshold` /
    `--par_decision` (any value but dev)."""
    fixed = script.ven_threshold if script.dataset == "ven" else script.par_decision
    if fixed == "dev":
        return bayes_decision(script.dataset), "bayes"
    return (float(fixed) if script.dataset == "ven" else fixed), "fixed"


def write_run(output_dir: Path, script, training_args, metrics: dict, splits: dict, predict, train_items,
              train_path, soft_rule: str) -> dict:
    """Every perspectivist predictor's end of a run: `metrics` (the predictor's own record) completed with what every
    run records, each split of `splits` predicted (`predict(items)` -> the probabilities of `annotator_rows(items)`),
    decided (`decision_of`), written (`capo.lewidi.outputs.write_split`, with every SOFT_RULES soft score on a
    labelled split), then the manifest and `metrics.json` (last: its presence marks a finished run)."""
    from capo.manifest import write_manifest

    dataset, seed = script.dataset, training_args.seed
    decision, source = decision_of(script)
    metrics = {"dataset": dataset, "predictor": script.predictor, "seed": seed, **metrics,
               "n_train_items": len(train_items),
               "n_train_pairs": sum(len(item.annotators) for item in train_items),
               "decision": decision, "decision_source": source, "splits": {}}
    for name, items in splits.items():
        rows = annotator_rows(items)
        probs = predict(items)
        predictions: AnnotatorPredictions = decide(rows, probs, dataset, decision)
        soft = soft_labels(soft_rule, items, rows, probs, predictions)
        entry = write_split(output_dir, name, items, rows, probs, predictions, soft, mean_soft(items, rows, probs),
                            train_items, seed=seed)
        entry["decision_fit"] = "Bayes rule of the measure, nothing fitted on dev" if source == "bayes" else "fixed"
        if "scores" in entry:
            entry["soft_by_rule"] = {rule: score(items, None, soft_labels(rule, items, rows, probs, predictions))["soft"]
                                     for rule in SOFT_RULES}
        metrics["splits"][name] = entry
    write_manifest(output_dir, config={"script": script, "training": training_args}, seed=seed,
                   data_files=sorted({str(train_path), *(entry["file"] for entry in metrics["splits"].values())}))
    write_json(output_dir / "metrics.json", metrics)
    return metrics


def run_heads(script, training_args, log=print) -> dict:
    """`recipes/perspectivist.py --predictor heads`: embed every split once (cached), choose C by cross-fitting on
    train, fit the heads on all of train, and write every split of `script.predict_splits` (`write_run`) with the
    Bayes decisions above (a fixed `--ven_threshold` / `--par_decision` replaces the perspectivist one)."""
    seed = training_args.seed
    train_path, train_items, _, _, splits = read_run_splits(script)  # dev is not used: no decision is fitted
    output_dir = Path(training_args.output_dir)
    finished = start_run(output_dir, {"script": vars(script), "seed": seed}, log)
    if finished is not None:
        return finished
    model_path = script.model_name_or_path or default_model_path()
    heads = HeadsComponent(script.dataset, model_path, script.feature_cache or str(output_dir / "features"),
                           seed=seed, components=script.components, log=log).fit(train_items)
    metrics = {"model": model_path, **heads.record, "components": script.components}
    return write_run(output_dir, script, training_args, metrics, splits, heads.predict, train_items, train_path,
                     heads.record["soft_rule"])
