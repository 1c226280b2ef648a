import math

import numpy as np
import pytest
from scipy.stats import entropy

from capo.evaluate.distributions import metrics


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


def test_kl_against_scipy_and_cross_entropy_is_entropy_plus_kl():
    rng = np.random.default_rng(0)
    h, m = rng.dirichlet([0.5] * 3, 50), rng.dirichlet([1.0] * 3, 50)
    h[0] = [1.0, 0.0, 0.0]  # exercise the clipping
    assert metrics.kl_per_item(h, m) == pytest.approx([_ref_kl(a, b) for a, b in zip(h, m)])
    # TVD = 1/2 L1: h[0] = [1, 0, 0] against m[0] moves 1 - m[0][0] of the mass.
    assert metrics.tvd_per_item(h[:1], m[:1])[0] == pytest.approx(1 - m[0][0])
    # cross-entropy = entropy + KL (rows without zeros, where clipping changes nothing)
    assert metrics.soft_cross_entropy_per_item(h, m)[1:] == pytest.approx(
        entropy(h[1:].T) + metrics.kl_per_item(h[1:], m[1:]), rel=1e-6
    )
    # one-hot human: CE is -ln of the model's probability of that label
    assert metrics.soft_cross_entropy_per_item(h[:1], m[:1])[0] == pytest.approx(-math.log(m[0][0]), rel=1e-6)


def test_identical_distributions_score_perfectly():
    h = np.random.default_rng(1).dirichlet([1, 1, 1], 20)
    report = metrics.distribution_report(h, h)
    assert report["kl"] == pytest.approx(0, abs=1e-9) and report["jsd"] == pytest.approx(0, abs=1e-6)
    assert report["tvd"] == 0 and report["dcorr"] == pytest.approx(1.0)


def test_distance_correlation_worked_from_the_definition():
    # dCor from its definition (V-statistic, as the papers' dcor call): a_ij = |x_i - x_j|, A = a double-centred
    # (A_ij = a_ij - mean_i - mean_j + grand mean), dCov^2 = mean(A * B), dCor^2 = dCov^2(x,y) / sqrt(dVar^2 x dVar^2 y).
    # h: three collinear rows at positions 0, 1, 2 along [1,0,0] -> [0,1,0] (unit = sqrt(1/2); dCor is scale-free).
    # m: the same line at positions 0, 2, 1.
    #   x = (0,1,2): a = [[0,1,2],[1,0,1],[2,1,0]], row means (1, 2/3, 1), grand 8/9
    #                -> A = 1/9 [[-10,2,8],[2,-4,2],[8,2,-10]], sum A^2 = 360/81
    #   y = (0,2,1): b = [[0,2,1],[2,0,1],[1,1,0]], row means (1, 1, 2/3), grand 8/9
    #                -> B = 1/9 [[-10,8,2],[8,-10,2],[2,2,-4]], sum B^2 = 360/81
    #   sum A*B = (100 + 16 + 16 + 16 + 40 + 4 + 16 + 4 + 40) / 81 = 252/81
    #   dCor^2 = (252/729) / sqrt((360/729)^2) = 252/360 = 0.7
    h = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.0, 1.0, 0.0]])
    m = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0]])
    assert metrics.distance_correlation(h, m) == pytest.approx(math.sqrt(0.7))
    assert metrics.distance_correlation(m, h) == pytest.approx(math.sqrt(0.7))  # symmetric


def test_distance_correlation_known_cases():
    rng = np.random.default_rng(2)
    h = rng.dirichlet([1, 1, 1], 30)
    # Relabelling the columns is an isometry (all pairwise distances kept): dCor = 1 although no entry agrees.
    assert metrics.distance_correlation(h, h[:, [2, 0, 1]]) == pytest.approx(1.0)
    # Any two distinct points: both centred distance matrices are +-d/2, so dCor = 1.
    assert metrics.distance_correlation(h[:2], rng.dirichlet([1, 1, 1], 2)) == pytest.approx(1.0)
    # A constant prediction carries no information: 0 by definition (dVar = 0).
    assert metrics.distance_correlation(h, np.tile([1 / 3] * 3, (30, 1))) == 0.0


def test_classification_metrics_against_argmax_human():
    h = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1]])
    m = np.array([[0.5, 0.3, 0.2], [0.2, 0.7, 0.1], [0.5, 0.1, 0.4], [0.4, 0.5, 0.1]])
    out = metrics.classification_metrics(h, m)
    assert out["accuracy"] == 0.5
    # per class F1: E: p=1/2 r=1/2 -> .5 ; N: p=1/2 r=1 -> 2/3 ; C: 0
    assert out["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 0) / 3)
    assert out["weighted_f1"] == pytest.approx((2 * 0.5 + 2 / 3 + 0) / 4)


# LeWiDi 2025 official metrics (lower is better), worked by hand from the definitions in
# /work/shared/data/lewidi2025/README.md ("Official metrics").


def test_lewidi_paraphrase_soft_average_wasserstein_by_hand():
    # Earth mover's cost over the 11 ordered Likert bins (-5..5 -> 0..10), moving mass between bins h, k costs |h-k|.
    # item 1: all mass at bin 0 -> half to bin 3, half to bin 10: 0.5*3 + 0.5*10 = 6.5
    t1, p1 = np.zeros(11), np.zeros(11)
    t1[0], p1[3], p1[10] = 1.0, 0.5, 0.5
    # item 2: target 0.2, 0.3, 0.5 on bins 0, 1, 2; prediction 0.5, 0.5 on bins 0, 1.
    #   transport: 0.3 of bin 0 and 0.2 of bin 1 must reach bin 2: 0.3*2 + 0.2*1 = 0.8
    #   (same by CDFs: target 0.2, 0.5, 1.0; prediction 0.5, 1.0, 1.0; gaps 0.3 + 0.5 + 0 = 0.8)
    t2, p2 = np.zeros(11), np.zeros(11)
    t2[:3], p2[:2] = [0.2, 0.3, 0.5], [0.5, 0.5]
    # item 3: identical -> 0. Mean over items: (6.5 + 0.8 + 0) / 3 = 2.4333...
    assert metrics.lewidi_paraphrase_soft([t1], [p1]) == pytest.approx(6.5)
    assert metrics.lewidi_paraphrase_soft([t2], [p2]) == pytest.approx(0.8)
    assert metrics.lewidi_paraphrase_soft([t1, t2, t2], [p1, p2, t2]) == pytest.approx(7.3 / 3)
    # the largest possible distance: all mass at -5 against all at +5 -> 10
    assert metrics.lewidi_paraphrase_soft([t1], [np.eye(11)[10]]) == pytest.approx(10.0)


def test_lewidi_paraphrase_perspectivist_normalised_absolute_distance_by_hand():
    # per item: mean over annotators of |target - prediction| (integers -5..5), divided by 11 (scale points).
    # item 1: |5-4|, |-5-(-5)|, |0-2|, |1-1| = 1, 0, 2, 0 -> mean 0.75 -> 0.75/11
    # item 2: |-5-5|, |-5-5| = 10, 10 -> mean 10 -> 10/11 (the maximum)
    # mean over items: (0.75 + 10) / 11 / 2 = 10.75 / 22
    assert metrics.lewidi_paraphrase_perspectivist([[5, -5, 0, 1]], [[4, -5, 2, 1]]) == pytest.approx(0.75 / 11)
    assert metrics.lewidi_paraphrase_perspectivist([[5, -5, 0, 1], [-5, -5]], [[4, -5, 2, 1], [5, 5]]) == \
        pytest.approx(10.75 / 22)


def test_lewidi_nli_soft_multilabel_manhattan_by_hand():
    # Per label (order C, E, N) the target and prediction are 2-vectors [1-p, p]; L1 between them, averaged
    # over the 3 labels, then over items.
    # item 1: target p = 1.0, 0.5, 0.0; predicted 0.5, 0.5, 0.25
    #   C: |0-0.5| + |1-0.5| = 1.0;  E: 0;  N: |1-0.75| + |0-0.25| = 0.5  -> mean 1.5/3 = 0.5
    # item 2: target 0, 0, 1; predicted 1, 1, 0 -> every label 2 (the maximum) -> 2
    # mean over items: (0.5 + 2) / 2 = 1.25
    assert metrics.lewidi_nli_soft([[1.0, 0.5, 0.0]], [[0.5, 0.5, 0.25]]) == pytest.approx(0.5)
    assert metrics.lewidi_nli_soft([[1.0, 0.5, 0.0], [0, 0, 1]], [[0.5, 0.5, 0.25], [1, 1, 0]]) == pytest.approx(1.25)


def test_lewidi_nli_perspectivist_multilabel_error_rate_by_hand():
    # Per item and label (C, E, N): wrong 0/1 entries over the annotators, / a (the distinct annotators);
    # mean over the 3 labels, then over items.
    # item 1 (3 annotators): C [1,0,1] vs [1,1,1] -> 1/3; E [0,0,0] vs [0,0,0] -> 0; N [1,1,1] vs [0,1,1] -> 1/3
    #   -> (2/3) / 3 = 2/9
    # item 2 (2 annotators): all right -> 0.   Mean: (2/9 + 0) / 2 = 1/9
    target = [[[1, 0, 1], [0, 0, 0], [1, 1, 1]], [[0, 1], [1, 0], [0, 0]]]
    pred = [[[1, 1, 1], [0, 0, 0], [0, 1, 1]], [[0, 1], [1, 0], [0, 0]]]
    assert metrics.lewidi_nli_perspectivist(target[:1], pred[:1]) == pytest.approx(2 / 9)
    assert metrics.lewidi_nli_perspectivist(target, pred) == pytest.approx(1 / 9)
    # The official `zip` pairing: extra predicted entries are ignored, missing ones are not counted as errors,
    # the denominator is always the target's length.
    # C: [1,0,1] vs [1,1,1,1] -> 1 wrong / 3; E: [0,0,0] vs [0,0] -> 0 / 3; N: [1,1,1] vs [0,1,1] -> 1/3 -> 2/9
    zipped = [[[1, 1, 1, 1], [0, 0], [0, 1, 1]]]
    assert metrics.lewidi_nli_perspectivist(target[:1], zipped) == pytest.approx(2 / 9)
