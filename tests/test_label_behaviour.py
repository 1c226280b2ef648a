"""Label behaviour from probabilities on hand-worked cases: exact values, reference bands, paired differences, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from capo.data.schema import label_space
from capo.errors import DataError
from capo.evaluate.behaviour.label_behaviour import (
    EPS,
    label_behaviour,
    paired_difference,
    per_item_scores,
    reference_bands,
)

NLI = label_space("nli").labels  # entailment, neutral, contradiction
E, N, C = NLI

# A1 is the target: mostly entailment, one item with two annotations (entailment + neutral).
HUMAN = {
    ("i1", "A1"): [E], ("i2", "A1"): [E, N], ("i3", "A1"): [C], ("i4", "A1"): [E], ("i5", "A1"): [N],
    ("i6", "A1"): [E],
    ("i1", "A2"): [N], ("i2", "A2"): [E], ("i3", "A2"): [C], ("i4", "A2"): [E], ("i5", "A2"): [C],
    ("i6", "A2"): [E],
    ("i1", "A3"): [C], ("i3", "A3"): ["c"],  # a short spelling, normalised
}
ITEMS = ["i1", "i2", "i3", "i4", "i5", "i6"]
TARGET_DIST = {"i1": [1, 0, 0], "i2": [0.5, 0.5, 0], "i3": [0, 0, 1], "i4": [1, 0, 0], "i5": [0, 1, 0],
               "i6": [1, 0, 0]}


def _soft(values: dict) -> dict:
    """Per-item distributions with no zero, so the log is exact (no EPS clipping)."""
    return {i: [0.6, 0.3, 0.1] if v[0] == 1 else [0.2, 0.2, 0.6] if v[2] == 1 else [0.3, 0.5, 0.2]
            for i, v in values.items()}


def test_prediction_equal_to_target_distributions():
    result = label_behaviour(TARGET_DIST, HUMAN, "A1", NLI)
    assert result["n_items"] == 6 and result["items"] == ITEMS
    assert result["marginal_js"] == pytest.approx(0.0, abs=1e-7)
    # Per-item loglik: log 1 = 0 everywhere except i2, where each of (e, n) has probability 0.5.
    assert result["loglik"] == pytest.approx(math.log(0.5) / 6)
    assert result["agreement"] == pytest.approx(1.0)
    assert result["loglik_ci_low"] <= result["loglik"] <= result["loglik_ci_high"]
    assert result["agreement_ci_low"] == pytest.approx(1.0) and result["agreement_ci_high"] == pytest.approx(1.0)


def test_per_item_scores_by_hand():
    pred = _soft(TARGET_DIST)
    scores = per_item_scores(pred, HUMAN, "A1", NLI)
    assert set(scores) == set(ITEMS)
    assert scores["i1"]["loglik"] == pytest.approx(math.log(0.6))
    assert scores["i1"]["agreement"] == pytest.approx(0.6)
    assert scores["i2"]["loglik"] == pytest.approx((math.log(0.3) + math.log(0.5)) / 2)
    assert scores["i2"]["agreement"] == pytest.approx(0.8)
    assert scores["i2"]["n_labels"] == 2 and scores["i2"]["target_distribution"] == [0.5, 0.5, 0.0]
    assert scores["i3"]["loglik"] == pytest.approx(math.log(0.6))


def test_zero_probability_is_floored_at_eps():
    pred = {i: [0.0, 0.0, 1.0] for i in ITEMS}
    scores = per_item_scores(pred, HUMAN, "A1", NLI)
    assert scores["i1"]["loglik"] == pytest.approx(math.log(EPS))
    assert scores["i3"]["loglik"] == pytest.approx(0.0)


def test_uniform_prediction_loglik_is_log_one_third():
    pred = {i: [1 / 3] * 3 for i in ITEMS}
    result = label_behaviour(pred, HUMAN, "A1", NLI)
    assert result["loglik"] == pytest.approx(math.log(1 / 3))
    bands = reference_bands(HUMAN, "A1", NLI, ITEMS)
    assert bands["uniform"]["loglik"] == pytest.approx(math.log(1 / 3))
    assert bands["uniform"]["marginal_js"] == pytest.approx(result["marginal_js"])


def test_marginal_weights_each_item_once():
    # Target marginal: items weigh 1 each -> (3.5, 1.5, 1) / 6; a constant prediction of it has JS 0.
    marginal = [3.5 / 6, 1.5 / 6, 1 / 6]
    result = label_behaviour({i: marginal for i in ITEMS}, HUMAN, "A1", NLI)
    assert result["marginal_js"] == pytest.approx(0.0, abs=1e-7)


def test_one_label_band_picks_most_frequent_label():
    bands = reference_bands(HUMAN, "A1", NLI, ITEMS)
    one = bands["one_label"]
    assert one["best_loglik"]["label"] == E
    assert one["best_marginal_js"]["label"] == E
    # Entailment one-hot: items where the target gave only e score 0, i2 scores (0 + log EPS) / 2, others log EPS.
    assert one["best_loglik"]["value"] == pytest.approx((0.5 + 2) * math.log(EPS) / 6)
    assert one["per_label"][C]["loglik"] < one["per_label"][E]["loglik"]


def test_other_annotators_band():
    bands = reference_bands(HUMAN, "A1", NLI, ITEMS)
    band = bands["other_annotators"]
    assert set(band["per_annotator"]) == {"A2", "A3"}
    assert band["per_annotator"]["A2"]["n_items"] == 6 and band["per_annotator"]["A3"]["n_items"] == 2
    # A3 on i1 predicts 0.9 * c + 0.1 * uniform; target gave e -> log(0.1 / 3); on i3 both say c -> log(0.9 + 0.1/3).
    expected = (math.log(0.1 / 3) + math.log(0.9 + 0.1 / 3)) / 2
    assert band["per_annotator"]["A3"]["loglik"] == pytest.approx(expected)
    for measure in ("marginal_js", "loglik", "agreement"):
        values = [v[measure] for v in band["per_annotator"].values()]
        assert band[measure]["min"] == pytest.approx(min(values))
        assert band[measure]["max"] == pytest.approx(max(values))
        assert band[measure]["mean"] == pytest.approx(np.mean(values))


def test_split_half_band_is_seeded():
    a = reference_bands(HUMAN, "A1", NLI, ITEMS, seed=3)["split_half"]
    b = reference_bands(HUMAN, "A1", NLI, ITEMS, seed=3)["split_half"]
    assert a == b and a["n_splits"] == 20 and a["n_items_fit"] == 3
    assert 0.0 <= a["marginal_js"] <= 1.0 and a["loglik"] < 0.0 and 0.0 <= a["agreement"] <= 1.0


def test_paired_difference_with_itself_is_zero():
    pred = _soft(TARGET_DIST)
    for measure in ("loglik", "agreement"):
        diff = paired_difference(pred, pred, HUMAN, "A1", NLI, measure)
        assert diff["estimate"] == 0.0 and diff["ci_low"] == 0.0 and diff["ci_high"] == 0.0
        assert diff["n_items"] == 6


def test_paired_difference_sign_and_interval():
    better, worse = TARGET_DIST, {i: [1 / 3] * 3 for i in ITEMS}
    diff = paired_difference(better, worse, HUMAN, "A1", NLI, "agreement", seed=1)
    assert diff["estimate"] == pytest.approx(1.0 - np.mean([1 / 3, 2 / 3, 1 / 3, 1 / 3, 1 / 3, 1 / 3]))
    assert diff["ci_low"] <= diff["estimate"] <= diff["ci_high"]
    assert diff == paired_difference(better, worse, HUMAN, "A1", NLI, "agreement", seed=1)


def test_paraphrase_likert_labels():
    likert = label_space("paraphrase").labels
    human = {("q1", "A1"): ["3"], ("q2", "A1"): ["+3"], ("q3", "A1"): ["-5"], ("q1", "A2"): ["2"]}
    pred = {q: [1 / 11] * 11 for q in ("q1", "q2", "q3")}
    result = label_behaviour(pred, human, "A1", likert)
    assert result["loglik"] == pytest.approx(math.log(1 / 11))
    bands = reference_bands(human, "A1", likert, ["q1", "q2", "q3"])
    assert bands["one_label"]["best_loglik"]["label"] == "3"


@pytest.mark.parametrize(
    ("predicted", "human", "message"),
    [
        ({"zz": [1 / 3] * 3}, HUMAN, "no item"),
        ({"i1": [0.5, 0.5]}, HUMAN, "2 entries"),
        ({"i1": [0.5, 0.5, 0.5]}, HUMAN, "sum to"),
        ({"i1": [1.2, -0.2, 0.0]}, HUMAN, "non-negative"),
        ({"i1": [1 / 3] * 3}, {("i1", "A1"): ["maybe"]}, "unknown label"),
    ],
)
def test_errors(predicted, human, message):
    with pytest.raises(DataError, match=message):
        label_behaviour(predicted, human, "A1", NLI)


def test_error_messages_name_the_item():
    with pytest.raises(DataError, match="item i1"):
        per_item_scores({"i1": [0.9, 0.0, 0.0]}, HUMAN, "A1", NLI)
    with pytest.raises(DataError, match="not labelled|none of the given items"):
        reference_bands(HUMAN, "A1", NLI, ["zz"])
    with pytest.raises(DataError, match="unknown per-item measure"):
        paired_difference(TARGET_DIST, TARGET_DIST, HUMAN, "A1", NLI, "marginal_js")
