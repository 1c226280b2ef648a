"""The one item-bootstrap engine (`capo.evaluate.intervals`): `mean_interval`, paired differences through it, and the
item-clustered `cluster_bootstrap`."""

from __future__ import annotations

import numpy as np
import pytest

from capo.evaluate.intervals import Estimate, cluster_bootstrap, mean_interval


def _values(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.3, 1.0, n)


def test_mean_interval_brackets_the_mean_and_is_seeded():
    values = _values(40)
    est = mean_interval(values, seed=3)
    assert est.mean == pytest.approx(values.mean())
    assert est.low < est.mean < est.high
    assert est.distribution.shape == (2000,)
    assert est == mean_interval(values, seed=3)
    assert np.array_equal(est.distribution, mean_interval(values, seed=3).distribution)


def width(e) -> float:
    return e.high - e.low


def test_mean_interval_level_and_shrinks_with_more_items():
    small, large = _values(30), _values(3000)
    assert width(mean_interval(large)) < width(mean_interval(small)) / 5  # about sqrt(100) = 10 times narrower
    assert width(mean_interval(small, level=0.5)) < width(mean_interval(small, level=0.95))
    assert width(mean_interval(small, n_resamples=500)) > 0


def test_mean_interval_is_the_percentile_of_its_distribution():
    est = mean_interval(_values(25), seed=1, level=0.9)
    low, high = np.percentile(est.distribution, [5, 95])
    assert est.low == pytest.approx(low) and est.high == pytest.approx(high)
    assert est.share_below_zero == pytest.approx(np.mean(est.distribution < 0))


def test_mean_interval_nan_below_two_values():
    empty = mean_interval([])
    assert np.isnan(empty.mean) and np.isnan(empty.low) and np.isnan(empty.high)
    one = mean_interval([0.7])
    assert one.mean == pytest.approx(0.7) and np.isnan(one.low) and np.isnan(one.high)
    assert np.isnan(one.share_below_zero)


def test_mean_interval_constant_values_are_a_point():
    est = mean_interval(np.full(10, 0.1))
    assert est.mean == est.low == est.high == pytest.approx(0.1)
    zero = mean_interval(np.zeros(5))
    assert (zero.mean, zero.low, zero.high) == (0.0, 0.0, 0.0) and zero.share_below_zero == 0.0
    assert mean_interval(np.full(4, -1.0)).share_below_zero == 1.0


def test_paired_difference_is_the_interval_of_per_item_differences():
    """Resampling items once for both sides (scipy's paired bootstrap of mean(a - b)) is the same as resampling the
    per-item differences, so a paired comparison is `mean_interval(a - b)`."""
    from scipy.stats import bootstrap

    rng = np.random.default_rng(0)
    difficulty = rng.normal(0, 2, 30)  # shared by both sides: cancels in a paired interval
    a, b = difficulty + 0.5 + rng.normal(0, 0.3, 30), difficulty + rng.normal(0, 0.3, 30)
    est = mean_interval(a - b, seed=7, n_resamples=1000)
    paired = bootstrap((a, b), lambda x, y, axis=-1: np.mean(x - y, axis=axis), paired=True, vectorized=True,
                       n_resamples=1000, method="percentile", rng=np.random.default_rng(7))
    assert est.low == pytest.approx(paired.confidence_interval.low)
    assert est.high == pytest.approx(paired.confidence_interval.high)
    assert 0 < est.low < 0.5 < est.high
    assert width(est) < width(mean_interval(a, seed=7)) / 3  # item difficulty cancels


def _items(correct: list[int], per_item: int = 1) -> dict[str, tuple[float, float]]:
    return {f"i{k}": (float(c * per_item), float(per_item)) for k, c in enumerate(correct)}


def test_cluster_bootstrap_keeps_an_items_responses_together():
    correct = [1, 0, 1, 1, 0, 1, 0, 0, 1, 1]
    one = cluster_bootstrap([_items(correct)], seed=0)
    assert isinstance(one, Estimate) and one.n_items == 10 and one.n_seeds == 1
    assert one.value == pytest.approx(0.6) and one.low < one.value < one.high
    # Each item answered 5 times alike: more responses, but still 10 items, so the same ratios and interval.
    fives = cluster_bootstrap([_items(correct, per_item=5)], seed=0)
    assert (fives.value, fives.low, fives.high, fives.n_items) == pytest.approx((one.value, one.low, one.high, 10))
    # Five seeds agreeing: the seed mean is each seed's ratio, and the item resample is shared, so still one item each.
    seeds = cluster_bootstrap([_items(correct)] * 5, seed=0)
    assert (seeds.value, seeds.low, seeds.high) == pytest.approx((one.value, one.low, one.high))
    assert seeds.n_seeds == 5
    # Fifty distinct items would narrow it: the interval counts items.
    many = cluster_bootstrap([_items(correct * 5)], seed=0)
    assert width(many) < width(one)


def test_cluster_bootstrap_empty_and_single_item():
    nothing = cluster_bootstrap([])
    assert np.isnan(nothing.value) and (nothing.n_items, nothing.n_seeds) == (0, 0) and nothing.text() == "–"
    single = cluster_bootstrap([{"i0": (2.0, 4.0)}])
    assert single.value == pytest.approx(0.5) and np.isnan(single.low) and single.text() == "0.500"
    assert cluster_bootstrap([{"i0": (0.0, 0.0)}]).n_items == 0  # no responses: no item


def test_callers_keep_the_random_streams_their_committed_numbers_were_made_with():
    from scipy.stats import bootstrap

    from capo.evaluate.behaviour.patterns import accuracy_interval

    correct = np.random.default_rng(1).random(300) < 0.6
    # pattern / imitation / judge accuracies: scipy's random_state stream, as before the shared engine
    old = bootstrap((correct.astype(float),), np.mean, n_resamples=2000, method="percentile", random_state=4)
    assert accuracy_interval(correct, 4)[1:] == (old.confidence_interval.low, old.confidence_interval.high)
    assert accuracy_interval(correct, 5) != accuracy_interval(correct, 4)
    # LeWiDi's paired bootstrap: the hand-written draws it replaced, rng.integers(0, n, (reps, n)) then quantiles
    diff = _values(50, seed=2)
    est = mean_interval(diff, seed=7)
    means = diff[np.random.default_rng(7).integers(0, 50, size=(2000, 50))].mean(axis=1)
    assert np.allclose((est.low, est.high), np.quantile(means, [0.025, 0.975]), rtol=0, atol=1e-12)
    assert est.share_below_zero == pytest.approx(np.mean(means < 0))
