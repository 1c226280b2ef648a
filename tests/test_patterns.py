"""Pattern analysis on hand-made responses: writers with a signature are found, shuffled names are not."""

from __future__ import annotations

import numpy as np
import pytest

from capo.evaluate.patterns import (
    Response,
    accuracy_interval,
    group_predictions,
    pattern_table,
    shuffle_within_items,
    strip_inputs,
    subtract_item_means,
)
from tests.conftest import run_script

TOPICS = ["dogs run in the park", "a man reads a book", "two kids play chess", "the cafe is closed today",
          "a woman sings loudly", "rain falls on the roof", "cars wait at the light", "the train leaves early"]
# Each writer has a weak habit: one marker word that appears in a third of their explanations.
MARKERS = {"A1": "arguably", "A2": "plainly", "A3": "seemingly", "A4": "frankly"}


def _rows(n_items: int = 120, seed: int = 0) -> list[Response]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_items):
        topic = TOPICS[i % len(TOPICS)]
        premise = f"{topic} number {i}"
        for name, marker in MARKERS.items():
            words = [marker if rng.random() < 0.35 else "the", "statement", "is", "about", topic]
            rows.append(Response(f"item{i}", name, "neutral", " ".join(words), (premise, "hypothesis")))
    return rows


def test_strip_inputs_removes_copied_words_case_insensitively():
    assert strip_inputs("The Dog is NOT sleeping", ["the dog sleeps"]) == "is NOT sleeping"


def test_subtract_item_means_centres_each_item():
    emb = np.array([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]])
    out = subtract_item_means(emb, ["a", "a", "b"])
    assert np.allclose(out, [[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]])


def test_group_predictions_sum_log_probabilities_over_distinct_items():
    # Three responses of A1; individually 2 of 3 look like A2, but summed evidence says A1.
    log_proba = np.log(np.array([[0.9, 0.1], [0.4, 0.6], [0.45, 0.55]]))
    true, pred = group_predictions(log_proba, ["A1", "A1", "A1"], ["x", "y", "z"], 3, np.random.default_rng(0), ["A1", "A2"])
    assert true.tolist() == [0] and pred.tolist() == [0]
    single_true, single_pred = group_predictions(log_proba, ["A1"] * 3, ["x", "y", "z"], 1, np.random.default_rng(0), ["A1", "A2"])
    assert sorted(single_pred.tolist()) == [0, 1, 1]
    # Two responses on the same item count once: no group of 2 can be formed from one item.
    true, _ = group_predictions(log_proba[:2], ["A1", "A1"], ["x", "x"], 2, np.random.default_rng(0), ["A1", "A2"])
    assert len(true) == 0


def test_shuffle_within_items_keeps_each_items_names():
    names = ["A1", "A2", "A3", "A1", "A2"]
    items = ["a", "a", "a", "b", "b"]
    shuffled = shuffle_within_items(names, items, np.random.default_rng(3))
    assert sorted(shuffled[:3]) == ["A1", "A2", "A3"] and sorted(shuffled[3:]) == ["A1", "A2"]


def test_accuracy_interval_brackets_the_mean():
    acc, low, high = accuracy_interval(np.array([1, 0, 1, 1, 0, 1, 1, 1]))
    assert acc == pytest.approx(0.75) and low < acc < high


def test_pattern_table_finds_weak_writer_signatures_and_the_control_does_not():
    table = pattern_table(_rows(), kinds=["char"], ks=[1, 8], seed=0, folds=4)
    get = {(r["reduced"], r["annotators"], r["k"]): r["accuracy"] for r in table}
    # Single responses: the marker is present a third of the time, so well above chance but far from perfect.
    assert 0.3 < get[(False, "real", 1)] < 0.8
    # Aggregating 8 responses of the same writer makes the habit visible.
    assert get[(False, "real", 8)] > get[(False, "real", 1)] and get[(False, "real", 8)] > 0.8
    # Input-content reduction removes the topic words, not the habit.
    assert get[(True, "real", 8)] > 0.8
    # Names shuffled within items: nothing to learn.
    assert get[(False, "shuffled", 1)] < 0.35 and get[(False, "shuffled", 8)] < 0.6


def test_cli_bad_group_size_is_one_line(tmp_path):
    out = tmp_path / "p.json"
    result = run_script("eval/patterns.py", "--dataset", "varierr", "--ks", "0", "--output", out)
    assert result.returncode == 2 and "--ks" in result.stderr and not out.exists()


def test_cli_unknown_dataset_is_one_line(tmp_path):
    out = tmp_path / "p.json"
    result = run_script("eval/patterns.py", "--dataset", str(tmp_path / "nope.jsonl"), "--output", out)
    assert result.returncode == 2 and result.stderr.startswith("error:") and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()
