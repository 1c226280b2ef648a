"""One engine for every bootstrap interval of a mean: percentile intervals from `scipy.stats.bootstrap`, seeded.

The study, LeWiDi and label-behaviour intervals resample items; the pattern and judge accuracies resample their own
units (groups, responses). All use the percentile method and a seeded generator, so one place fixes how that is
done. `mean_interval` is the mean of per-unit values;
a paired difference is the `mean_interval` of the per-item differences (the same resample for both sides, so item
difficulty cancels). `cluster_bootstrap` is the mean over seeds of a ratio of per-item sums, one paired resample of
the item axis across every seed's arrays, so all of an item's responses move together.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import bootstrap

N_RESAMPLES = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class MeanInterval:
    """A mean over items, its percentile interval and the bootstrap distribution of the mean it comes from."""

    mean: float
    low: float
    high: float
    distribution: np.ndarray = field(repr=False, compare=False)  # resampled means; empty where there is no interval

    @property
    def share_below_zero(self) -> float:
        """Share of resampled means below 0 (for a difference a - b of losses: how often a is better)."""
        return float(np.mean(self.distribution < 0)) if self.distribution.size else float("nan")


def mean_interval(values: ArrayLike, *, seed: int = 0, n_resamples: int = N_RESAMPLES, level: float = CONFIDENCE,
                  legacy_random_state: int | None = None) -> MeanInterval:
    """The mean of `values` (one per independent unit) and its percentile-bootstrap interval over the units.

    NaN interval (and an empty distribution) with fewer than two values; constant values give (mean, mean, mean),
    since scipy warns and may return NaN on a degenerate resample distribution. `legacy_random_state` replaces
    `default_rng(seed)` by scipy's older `random_state` stream, where a caller's committed numbers were made with it."""
    values = np.asarray(values, dtype=float).ravel()
    nan = float("nan")
    if values.size == 0:
        return MeanInterval(nan, nan, nan, np.empty(0))
    mean = float(values.mean())
    if values.size < 2:
        return MeanInterval(mean, nan, nan, np.empty(0))
    if values.min() == values.max():
        return MeanInterval(mean, mean, mean, np.full(n_resamples, mean))
    res = bootstrap((values,), np.mean, n_resamples=n_resamples, confidence_level=level, method="percentile",
                    **({"rng": np.random.default_rng(seed)} if legacy_random_state is None
                       else {"random_state": legacy_random_state}))
    return MeanInterval(mean, float(res.confidence_interval.low), float(res.confidence_interval.high),
                        np.asarray(res.bootstrap_distribution, dtype=float))


@dataclass
class Estimate:
    value: float
    low: float
    high: float
    n_items: int
    n_seeds: int

    def text(self) -> str:
        if np.isnan(self.value):
            return "–"
        return f"{self.value:.3f}" + ("" if np.isnan(self.low) else f" [{self.low:.3f}, {self.high:.3f}]")


def _seed_mean_ratio(*arrays, axis=-1):
    """Mean over seeds of sum(numerator) / sum(denominator); arrays alternate numerator, denominator per seed."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = [np.sum(n, axis=axis) / np.sum(d, axis=axis) for n, d in zip(arrays[::2], arrays[1::2], strict=True)]
    return np.mean(ratios, axis=0)


def cluster_bootstrap(per_seed: list[dict[str, tuple[float, float]]], *, seed: int = 0,
                      n_resamples: int = N_RESAMPLES) -> Estimate:
    """The mean over seeds of a ratio of per-item sums (e.g. correct / responses), with a percentile interval from
    `scipy.stats.bootstrap` that resamples items: one paired resample of the item axis for every seed's arrays,
    so all of an item's responses (every target, every seed) move together."""
    per_seed = [s for s in per_seed if sum(n for _, n in s.values()) > 0]
    items = sorted(set().union(*per_seed)) if per_seed else []
    if not items:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, 0)
    arrays = []
    for s in per_seed:
        arrays += [np.array([s.get(i, (0.0, 0.0))[0] for i in items]), np.array([s.get(i, (0.0, 0.0))[1] for i in items])]
    value = float(_seed_mean_ratio(*arrays))
    low = high = float("nan")
    if len(items) >= 2:
        res = bootstrap(tuple(arrays), _seed_mean_ratio, paired=True, vectorized=True, n_resamples=n_resamples,
                        confidence_level=CONFIDENCE, method="percentile", rng=np.random.default_rng(seed))
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return Estimate(value, low, high, len(items), len(per_seed))
