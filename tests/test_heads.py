"""Per-annotator heads (capo.lewidi.heads): each decision rule minimises its official measure on small cases worked
by hand, and the recipe's default predictor runs end to end, a label-less split file included."""

import itertools
import json

import numpy as np
import pytest
from conftest import load_script
from test_perspectivist import NAMES, PAR_HABITS, VEN_HABITS, _split

from capo.data.formats.lewidi import PAR_LABELS, VEN_LABELS, LewidiItem
from capo.lewidi.heads import bayes_decision, bayes_soft, median_share
from capo.lewidi.perspectivist import decide
from capo.lewidi.predictions import aggregate_soft, read_annotator_predictions
from capo.lewidi.score import score


def _par_item(annotators, labels=None) -> LewidiItem:
    given = {a: (labels[k],) for k, a in enumerate(annotators)} if labels else {a: (0,) for a in annotators}
    soft = {p: sum(g[0] == p for g in given.values()) / len(given) for p in PAR_LABELS}
    return LewidiItem("i", "par", ("q1", "q2"), tuple(annotators), given, soft)


def _pmf(**mass) -> np.ndarray:
    out = np.zeros(len(PAR_LABELS))
    for point, p in mass.items():
        out[PAR_LABELS.index(int(point.replace("m", "-")))] = p
    return out


def test_median_share_is_the_median_of_a_poisson_binomial_share():
    # Two annotators at p = 0.9 and 0.2: shares 0, 1/2, 1 with probability 0.08, 0.74, 0.18 -> median 1/2.
    assert median_share([0.9, 0.2]) == 0.5
    assert median_share([0.4]) == 0.0 and median_share([0.6]) == 1.0
    # Its expected VEN soft loss 2|p - s| (0.26) beats the mean share's (0.55: 0.324), and every p on a grid.
    shares, weights = np.array([0, 0.5, 1]), np.array([0.08, 0.74, 0.18])
    loss = lambda p: float(weights @ (2 * np.abs(p - shares)))
    assert loss(0.5) == pytest.approx(0.26) and loss(0.55) == pytest.approx(0.324)
    assert all(loss(0.5) <= loss(p) + 1e-12 for p in np.linspace(0, 1, 101))


def test_ven_half_threshold_minimises_the_expected_error_rate():
    probs = np.array([[0.6, 0.2, 0.45]])  # P(contradiction), P(entailment), P(neutral), one annotator
    rows = [{"id": "i", "annotator": "Ann1"}]
    chosen = decide(rows, probs, "ven", bayes_decision("ven"))[("i", "Ann1")]
    assert chosen == ("contradiction",)

    def expected_error(labels):  # each label a 0/1 cell wrong with the probability of the other value, averaged
        return np.mean([1 - p if lab in labels else p for lab, p in zip(VEN_LABELS, probs[0])])

    sets = [s for n in range(4) for s in itertools.combinations(VEN_LABELS, n)]
    assert expected_error(chosen) == pytest.approx(min(map(expected_error, sets)))
    assert expected_error(chosen) == pytest.approx((0.4 + 0.2 + 0.45) / 3)  # by hand


def test_par_median_minimises_the_expected_absolute_distance():
    rows = [{"id": "i", "annotator": "Ann1"}]
    for pmf, median in ((_pmf(m5=0.45, **{"5": 0.55}), 5), (_pmf(m5=0.4, **{"1": 0.3, "2": 0.3}), 1)):
        chosen = decide(rows, pmf[None], "par", bayes_decision("par"))[("i", "Ann1")][0]
        expected = [float(pmf @ np.abs(np.array(PAR_LABELS) - point)) for point in PAR_LABELS]
        assert chosen == median and expected[PAR_LABELS.index(chosen)] == pytest.approx(min(expected))
    # By hand: 0.45 at -5 and 0.55 at +5: predicting +5 costs 0.45 * 10 = 4.5 points, the mean (0) 5.


def _expected_soft_loss(annotators, probs, soft) -> float:
    """The expected official Par soft score of `soft`, over every joint outcome of independent annotators."""
    total = 0.0
    support = [np.flatnonzero(p) for p in probs]
    for combo in itertools.product(*support):
        weight = float(np.prod([probs[k][j] for k, j in enumerate(combo)]))
        item = _par_item(annotators, [PAR_LABELS[j] for j in combo])
        total += weight * score([item], None, {"i": soft})["soft"]
    return total


def test_par_bayes_soft_beats_the_mean_distribution_and_every_point_mass():
    # One annotator, 0.4 at -5 and 0.6 at +5. By hand: the gold CDF below +5 is 1 with probability 0.4, so the
    # best predicted CDF there is its median, 0: all mass at +5, expected Wasserstein 0.4 * 10 = 4; the mean
    # distribution itself costs 0.4 * 0.6 * 10 + 0.6 * 0.4 * 10 = 4.8.
    one = _pmf(m5=0.4, **{"5": 0.6})
    rows = [{"id": "i", "annotator": "Ann1"}]
    soft = bayes_soft([_par_item(["Ann1"])], rows, one[None])["i"]
    assert soft[5] == 1.0 and _expected_soft_loss(["Ann1"], [one], soft) == pytest.approx(4.0)
    assert _expected_soft_loss(["Ann1"], [one], dict(zip(PAR_LABELS, one))) == pytest.approx(4.8)
    # Three annotators: the Bayes soft label scores no worse than their mean, the shares of their medians, or any
    # distribution in quarter steps over the support.
    probs = [_pmf(m5=0.5, **{"0": 0.5}), _pmf(**{"0": 0.3, "3": 0.7}), _pmf(m2=0.2, **{"3": 0.8})]
    names = NAMES[:3]
    item, rows = _par_item(names), [{"id": "i", "annotator": a} for a in names]
    bayes = bayes_soft([item], rows, np.array(probs))["i"]
    best = _expected_soft_loss(names, probs, bayes)
    mean = dict(zip(PAR_LABELS, np.mean(probs, axis=0)))
    medians = aggregate_soft([item], decide(rows, np.array(probs), "par", "median"))["i"]
    assert best <= _expected_soft_loss(names, probs, mean) - 0.05
    assert best <= _expected_soft_loss(names, probs, medians) + 1e-12
    points = (-5, -2, 0, 3)
    for quarters in itertools.product(range(5), repeat=len(points)):
        if sum(quarters) == 4:
            other = {p: 0.0 for p in PAR_LABELS} | {p: q / 4 for p, q in zip(points, quarters)}
            assert best <= _expected_soft_loss(names, probs, other) + 1e-12


@pytest.mark.parametrize("dataset", ["ven", "par"])
def test_heads_are_the_recipe_default_and_predict_a_label_less_file(dataset, tmp_path):
    train = _split(tmp_path / f"{dataset}_train.json", dataset, 12, seed=1)
    dev = _split(tmp_path / f"{dataset}_dev.json", dataset, 6, seed=2)
    clear = tmp_path / f"{dataset}_test_clear.json"
    records = json.loads(dev.read_text())
    for record in records.values():  # the _test_clear form: blank annotations, no soft label
        record["annotations"] = {a: "" for a in record["annotations"]}
        record["soft_label"] = {}
    clear.write_text(json.dumps(records))
    out = tmp_path / "run"
    metrics = load_script("recipes/perspectivist.py").main(
        ["--config", "recipes/configs/perspectivist_cpu.yaml", "--dataset", dataset, "--train_file", str(train),
         "--dev_split", str(dev), "--predict_splits", f"{dev},{clear}", "--output_dir", str(out)])
    assert metrics["predictor"] == "heads" and metrics["decision"] == bayes_decision(dataset)
    assert metrics["splits"][str(dev)]["scores"]["perspectivist"] == 0.0  # each annotator's habit, exactly
    assert "scores" not in metrics["splits"][str(clear)]
    predictions = read_annotator_predictions(out / "predictions_ven_test_clear.jsonl".replace("ven", dataset), dataset)
    habits = VEN_HABITS if dataset == "ven" else {a: (p,) for a, p in PAR_HABITS.items()}
    assert all(labels == habits[a] for (_, a), labels in predictions.items()) and len(predictions) == 24
    codabench = out / f"codabench_{clear.stem}"
    assert (codabench / "res.zip").exists() and (out / f"soft_{clear.stem}.jsonl").exists()
    assert len(list((out / "features").glob("*.npz"))) == 2  # train and dev embedded once; the clear file reuses dev's
