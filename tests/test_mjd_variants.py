"""MJD estimator variants (p_norm, softmax at T = 1 and T = 20, the log-space average) from raw per-prompt scores,
and the label-prior constant (the mean ChaosNLI-dev HJD) that every distribution table carries beside uniform."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import write_jsonl

from capo.data.distributions import write_distributions
from capo.data.formats.common import CHAOS_DIR
from capo.data.formats.mjd_files import load_chaosnli
from capo.data.schema import NLI
from capo.errors import DataError
from capo.evaluate.distributions.compare import (
    NO_RAW,
    NOT_POSITIVE,
    DistributionsArguments,
    baseline_distributions,
    baseline_report,
    compare_distributions,
    constant_distributions,
    constants_note,
    format_csv,
    format_table,
    label_prior,
)
from capo.evaluate.distributions.metrics import distribution_report
from capo.mjd.estimate import OPTION_ORDERS, VARIANTS, mjd_variants, to_label_order


def _orders(label_logits, position_bias=(0.0, 0.0, 0.0)) -> np.ndarray:
    """A model's letter scores in all 6 option orders (label logit + the bias of the letter's position), in label
    order, as `read_raw_scores` returns them."""
    letters = np.array([[label_logits[label] + position_bias[j] for j, label in enumerate(order)]
                        for order in OPTION_ORDERS])
    return to_label_order(letters, OPTION_ORDERS)


def test_the_log_space_average_cancels_an_additive_position_bias_exactly_and_the_probability_average_does_not():
    z = [2.0, 0.5, -1.0]
    clean, biased = mjd_variants(_orders(z)), mjd_variants(_orders(z, (3.0, 0.0, 0.0)))  # +3 on letter A always
    np.testing.assert_allclose(biased["log-space"], clean["log-space"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(clean["log-space"], np.exp(z) / np.exp(z).sum(), atol=1e-12)  # the unbiased model
    assert np.abs(biased["T=1"] - clean["T=1"]).max() > 0.05  # averaging probabilities only flattens it
    assert np.abs(biased["T=20"] - clean["T=20"]).max() > 1e-5  # (at T = 20 only in the second order)
    positive = [6.0, 4.5, 3.0]  # p_norm needs positive scores: it does not cancel the bias either
    assert np.abs(mjd_variants(_orders(positive, (3.0, 0.0, 0.0)))["p_norm"]
                  - mjd_variants(_orders(positive))["p_norm"]).max() > 1e-3
    # a bias on every position at once (any b_A, b_B, b_C) cancels as well
    np.testing.assert_allclose(mjd_variants(_orders(z, (0.7, -2.0, 5.0)))["log-space"], clean["log-space"], atol=1e-12)


def test_p_norm_and_the_two_temperatures_match_hand_values():
    scores = np.array([[1.0, 2.0, 1.0], [2.0, 1.0, 1.0]])  # two prompts, label order
    variants = mjd_variants(scores)
    assert list(variants) == list(VARIANTS)
    np.testing.assert_allclose(variants["p_norm"], [0.375, 0.375, 0.25])  # [1/4, 1/2, 1/4] and [1/2, 1/4, 1/4]
    a, b = 1 / (2 + math.e), math.e / (2 + math.e)  # softmax([1, 2, 1]) = [a, b, a]
    np.testing.assert_allclose(variants["T=1"], [(a + b) / 2, (a + b) / 2, a])
    a, b = 1 / (2 + math.exp(0.05)), math.exp(0.05) / (2 + math.exp(0.05))  # softmax([1, 2, 1] / 20)
    np.testing.assert_allclose(variants["T=20"], [(a + b) / 2, (a + b) / 2, a])
    # log-space: the mean log-softmax is [1.5, 1.5, 1] minus one constant, so softmax([1.5, 1.5, 1])
    e = np.exp([1.5, 1.5, 1.0])
    np.testing.assert_allclose(variants["log-space"], e / e.sum())


def test_p_norm_is_undefined_for_a_score_at_or_below_zero_and_bad_arrays_are_refused():
    variants = mjd_variants(np.array([[1.0, 0.0, -2.0]]))
    assert variants["p_norm"] is None and variants["T=1"] is not None
    with pytest.raises(DataError, match="finite scores"):
        mjd_variants(np.array([[1.0, np.nan, 0.0]]))
    with pytest.raises(DataError, match="non-empty"):
        mjd_variants(np.zeros((0, 3)))


def test_the_label_prior_is_the_chaosnli_dev_mean_and_is_scored_by_the_same_metric_code():
    rows = [json.loads(line) for line in (CHAOS_DIR / "dev.json").read_text().splitlines() if line.strip()]
    dev_mean = np.mean([row["label"] for row in rows], axis=0)
    np.testing.assert_allclose(label_prior(), dev_mean)
    assert label_prior() == pytest.approx([0.414, 0.394, 0.193], abs=5e-4)
    dists = baseline_distributions()
    ids = sorted(dists["human"])
    h = np.array([dists["human"][i] for i in ids])
    report = baseline_report(dists)
    assert list(report)[:2] == ["uniform", "label_prior"]
    assert report["label_prior"] == distribution_report(h, np.tile(dev_mean, (len(ids), 1)))
    assert report["label_prior"]["dcorr"] == 0.0  # a constant: dcor's convention, said in the caption
    assert report["label_prior"]["kl"] < report["uniform"]["kl"]
    assert constant_distributions(["a"], n_labels=11)["label_prior"] is None  # not 3-way NLI: undefined


def test_the_caption_says_whether_the_label_prior_is_in_sample():
    dev_ids = [item.id for item in load_chaosnli(CHAOS_DIR / "dev.json")[:5]]
    assert "in-sample for 5 of the 5 scored items" in constants_note(dev_ids)
    assert "out of sample for every scored item" in constants_note(baseline_distributions()["human"])
    assert "distance correlation of a constant is undefined" in constants_note(dev_ids)


def _run(tmp_path, *, raw: bool):
    """An MJD run's files for 3 items: human, model (the T=20 MJD) and, with `raw`, its raw per-prompt scores."""
    rng = np.random.default_rng(0)
    human, model, raw_rows = {}, {}, []
    for k in range(3):
        letters = rng.normal(0, 3, size=(len(OPTION_ORDERS), 3)) + 5.0  # positive: p_norm is defined
        human[f"i{k}"] = rng.dirichlet([1, 1, 1]).tolist()
        model[f"i{k}"] = mjd_variants(to_label_order(letters, OPTION_ORDERS))["T=20"].tolist()
        raw_rows.append({"id": f"i{k}", "prompts": [
            {"options": "".join(NLI.short[label].upper() for label in order), "explanations": [],
             "letter_scores": row.tolist()} for order, row in zip(OPTION_ORDERS, letters)]})
    write_distributions(tmp_path / "human.jsonl", human)
    write_distributions(tmp_path / "mjd.jsonl", model)
    if raw:
        write_jsonl(tmp_path / "raw_scores.jsonl", raw_rows)
    return human, raw_rows


def test_a_run_with_raw_scores_gets_every_variant_row_scored_and_the_constants(tmp_path):
    human, raw_rows = _run(tmp_path, raw=True)
    notes: list[str] = []
    report = compare_distributions(DistributionsArguments(
        human=str(tmp_path / "human.jsonl"), model=str(tmp_path / "mjd.jsonl"), raw=str(tmp_path / "raw_scores.jsonl")),
        notes)
    assert list(report) == ["mjd", *(f"mjd {v}" for v in VARIANTS), "uniform", "label_prior"]
    assert report["mjd T=20"] == pytest.approx(report["mjd"])  # the run's own estimator, recomputed from raw
    ids = sorted(human)
    h = np.array([human[i] for i in ids])
    scores = {row["id"]: to_label_order(np.array([p["letter_scores"] for p in row["prompts"]]), OPTION_ORDERS)
              for row in raw_rows}
    logspace = np.array([mjd_variants(scores[i])["log-space"] for i in ids])
    assert report["mjd log-space"] == pytest.approx(distribution_report(h, logspace))
    assert report["label_prior"] == pytest.approx(distribution_report(h, np.tile(label_prior(), (3, 1))))
    assert any("position-bias diagnostic" in n for n in notes) and any("label_prior" in n for n in notes)


def test_a_run_without_raw_scores_says_n_a_in_the_table(tmp_path):
    _run(tmp_path, raw=False)
    args = DistributionsArguments(human=str(tmp_path / "human.jsonl"), model=str(tmp_path / "mjd.jsonl"),
                                  mjd_variants=True, count_items=True)
    report = compare_distributions(args)
    for v in VARIANTS:
        assert report[f"mjd {v}"]["kl"] == NO_RAW and report[f"mjd {v}"]["items"] == 3
    columns = list(report["mjd"])
    assert "| mjd log-space | n/a (no raw scores) | n/a (no raw scores) |" in format_table(report, columns)
    assert "mjd p_norm,n/a (no raw scores)," in format_csv(report, columns)
    assert isinstance(report["uniform"]["kl"], float)


def test_p_norm_of_a_run_with_a_non_positive_score_says_so(tmp_path):
    _, raw_rows = _run(tmp_path, raw=False)
    raw_rows[0]["prompts"][0]["letter_scores"][1] = -0.5
    write_jsonl(tmp_path / "raw_scores.jsonl", raw_rows)
    report = compare_distributions(DistributionsArguments(
        human=str(tmp_path / "human.jsonl"), model=str(tmp_path / "mjd.jsonl"), raw=str(tmp_path / "raw_scores.jsonl")))
    assert report["mjd p_norm"]["jsd"] == NOT_POSITIVE and isinstance(report["mjd T=1"]["jsd"], float)


def test_raw_scores_must_cover_every_scored_item(tmp_path):
    _, raw_rows = _run(tmp_path, raw=False)
    write_jsonl(tmp_path / "raw_scores.jsonl", raw_rows[:2])
    with pytest.raises(DataError, match="covers 2 of the 3 items"):
        compare_distributions(DistributionsArguments(human=str(tmp_path / "human.jsonl"),
                                                     model=str(tmp_path / "mjd.jsonl"),
                                                     raw=str(tmp_path / "raw_scores.jsonl")))
    with pytest.raises(DataError, match="go with --human and --model"):
        DistributionsArguments(baselines=True, mjd_variants=True)
