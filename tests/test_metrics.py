import math

import numpy as np
import pytest
from scipy.stats import entropy, wasserstein_distance

from capo.evaluate import metrics


def _ref_kl(h, m):
    h = np.clip(h, 1e-10, 1); m = np.clip(m, 1e-10, 1)
    return entropy(h / h.sum(), m / m.sum())  # scipy normalises and uses natural log


def test_kl_js_tvd_hand_worked():
    h, m = np.array([0.5, 0.5, 0.0]), np.array([0.25, 0.5, 0.25])
    # KL = 0.5 ln 2 (the zero entry contributes 0 after clipping, up to 1e-10 terms)
    assert metrics.kl_per_item(h, m)[0] == pytest.approx(0.5 * math.log(2), abs=1e-8)
    mix = (h + m) / 2
    js = 0.5 * sum(a * math.log(a / b) for a, b in zip(h, mix) if a) + 0.5 * sum(a * math.log(a / b) for a, b in zip(m, mix))
    assert metrics.js_distance_per_item(h, m)[0] == pytest.approx(math.sqrt(js), abs=1e-6)
    assert metrics.tvd_per_item(h, m)[0] == pytest.approx(0.25)
    assert metrics.kl_torch_mean(h, m)[0] == pytest.approx(0.5 * math.log(2) / 3, abs=1e-8)


def test_against_scipy_on_random_distributions():
    rng = np.random.default_rng(0)
    h, m = rng.dirichlet([0.5] * 3, 50), rng.dirichlet([1.0] * 3, 50)
    h[0] = [1.0, 0.0, 0.0]  # exercise the clipping
    assert metrics.kl_per_item(h, m) == pytest.approx([_ref_kl(a, b) for a, b in zip(h, m)])
    assert metrics.tvd_per_item(h, m) == pytest.approx(0.5 * np.abs(h - m).sum(1))
    ce = -(h * np.log(np.clip(m, 1e-10, 1))).sum(1)
    assert metrics.soft_cross_entropy_per_item(h, m) == pytest.approx(ce, rel=1e-6)
    # cross-entropy = entropy + KL
    assert metrics.soft_cross_entropy_per_item(h, m)[1:] == pytest.approx(
        entropy(h[1:].T) + metrics.kl_per_item(h[1:], m[1:]), rel=1e-6
    )


def test_identical_distributions_score_perfectly():
    h = np.random.default_rng(1).dirichlet([1, 1, 1], 20)
    report = metrics.distribution_report(h, h)
    assert report["kl"] == pytest.approx(0, abs=1e-9) and report["jsd"] == pytest.approx(0, abs=1e-6)
    assert report["tvd"] == 0 and report["dcorr"] == pytest.approx(1.0)


def test_distance_correlation_constant_is_zero_and_matches_dcor():
    import dcor

    rng = np.random.default_rng(2)
    h, m = rng.dirichlet([1, 1, 1], 30), rng.dirichlet([1, 1, 1], 30)
    assert metrics.distance_correlation(h, np.tile([1 / 3] * 3, (30, 1))) == 0.0
    assert metrics.distance_correlation(h, m) == pytest.approx(dcor.distance_correlation(h, m))


def test_classification_metrics_against_argmax_human():
    h = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1]])
    m = np.array([[0.5, 0.3, 0.2], [0.2, 0.7, 0.1], [0.5, 0.1, 0.4], [0.4, 0.5, 0.1]])
    out = metrics.classification_metrics(h, m)
    assert out["accuracy"] == 0.5
    # per class F1: E: p=1/2 r=1/2 -> .5 ; N: p=1/2 r=1 -> 2/3 ; C: 0
    assert out["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 0) / 3)
    assert out["weighted_f1"] == pytest.approx((2 * 0.5 + 2 / 3 + 0) / 4)


def test_lewidi_paraphrase_soft_is_the_1d_earth_movers_distance():
    t = np.zeros(11); t[0] = 1.0
    p = np.zeros(11); p[3] = 0.5; p[10] = 0.5
    assert metrics.lewidi_paraphrase_soft([t], [p]) == pytest.approx(0.5 * 3 + 0.5 * 10)
    rng = np.random.default_rng(3)
    a, b = rng.dirichlet([1] * 11, 5), rng.dirichlet([1] * 11, 5)
    cdf_gap = np.abs(np.cumsum(a, 1) - np.cumsum(b, 1)).sum(1).mean()
    assert metrics.lewidi_paraphrase_soft(a, b) == pytest.approx(cdf_gap)
    assert metrics.lewidi_paraphrase_soft(a, b) == pytest.approx(np.mean([wasserstein_distance(range(11), range(11), x, y) for x, y in zip(a, b)]))


def test_lewidi_paraphrase_perspectivist_divides_by_eleven():
    assert metrics.lewidi_paraphrase_perspectivist([[5, -5, 0, 1]], [[4, -5, 2, 1]]) == pytest.approx((1 + 0 + 2 + 0) / 4 / 11)


def test_lewidi_nli_soft_manhattan():
    # per label L1 of [1-p, p] vectors = 2|p - p'|; mean over labels, then items
    assert metrics.lewidi_nli_soft([[1.0, 0.5, 0.0]], [[0.5, 0.5, 0.25]]) == pytest.approx((1.0 + 0 + 0.5) / 3)


def test_lewidi_nli_perspectivist_error_rate_uses_zip_semantics():
    target = [[[1, 0, 1], [0, 0, 0], [1, 1, 1]]]  # 3 annotators, labels C, E, N
    pred = [[[1, 1, 1, 1], [0, 0], [0, 1, 1]]]  # extra entries ignored, missing ones not counted
    assert metrics.lewidi_nli_perspectivist(target, pred) == pytest.approx((1 / 3 + 0 / 3 + 1 / 3) / 3)
