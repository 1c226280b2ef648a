"""Calibrated MJDs: a known temperature is recovered by cross-fitting; raw scores go back to label order."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import call_script, write_jsonl

from capo.errors import DataError
from capo.evaluate.distributions.calibration import (
    crossfit,
    fit_temperature,
    mjd_at,
    top_letter_shares,
)
from capo.mjd.estimate import label_scores


def test_label_scores_undo_the_option_order():
    # Letters A, B, C showed neutral, contradiction, entailment: their scores 1, 2, 3 belong to N, C, E.
    rows = label_scores([{"id": "x", "prompts": [{"options": "NCE", "letter_scores": [1.0, 2.0, 3.0]}]}])
    assert rows["x"].tolist() == [[3.0, 1.0, 2.0]]


def test_top_letter_shares_count_answer_positions_not_labels():
    # B is on top in 3 of 4 prompts whatever label it shows: a position bias; A once.
    rows = [{"id": "x", "prompts": [{"options": "ENC", "letter_scores": [0.0, 5.0, 1.0]},
                                    {"options": "CEN", "letter_scores": [0.0, 5.0, 1.0]}]},
            {"id": "y", "prompts": [{"options": "NCE", "letter_scores": [2.0, 3.0, 1.0]},
                                    {"options": "ECN", "letter_scores": [9.0, 3.0, 1.0]}]}]
    assert top_letter_shares(rows) == {"A": 0.25, "B": 0.75, "C": 0.0}


def test_crossfit_recovers_the_temperature_that_made_the_human_distributions():
    rng = np.random.default_rng(0)
    scores = {f"i{k}": rng.normal(0, 10, size=(6, 3)) for k in range(40)}
    human = {i: mjd_at(s, 5.0).tolist() for i, s in scores.items()}
    calibrated, temperatures = crossfit(list(scores), scores, human, folds=5, seed=0)
    assert temperatures == pytest.approx([5.0] * 5, rel=1e-3)
    assert np.allclose([calibrated[i] for i in scores], [human[i] for i in scores], atol=1e-4)
    # A sharper human side asks for a lower temperature.
    sharp = {i: mjd_at(s, 1.5).tolist() for i, s in scores.items()}
    assert fit_temperature(list(scores.values()), np.array(list(sharp.values()))) == pytest.approx(1.5, rel=1e-3)


def _raw_and_human(seed: int, items: int = 20) -> tuple[list[dict], list[dict]]:
    """Raw letter scores of 6 prompts per item, and human distributions that are their MJDs at T = 3."""
    rng = np.random.default_rng(seed)
    raw, human = [], []
    for k in range(items):
        s = rng.normal(0, 8, size=(6, 3))
        raw.append({"id": f"i{k}", "prompts": [{"options": "ENC", "letter_scores": row.tolist()} for row in s]})
        human.append({"id": f"i{k}", "distribution": mjd_at(s, 3.0).tolist()})
    return raw, human


def test_cli_reports_and_writes_calibrated_mjds(tmp_path):
    raw, human = _raw_and_human(1)
    out = tmp_path / "cal.jsonl"
    result = call_script("eval/calibrate.py", "--raw", write_jsonl(tmp_path / "raw.jsonl", raw),
                        "--human", write_jsonl(tmp_path / "h.jsonl", human), "--output", out, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["rows"]["T=cross-fitted"]["kl"] < report["rows"]["T=20"]["kl"]
    assert sum(report["top_letter_shares"].values()) == pytest.approx(1.0)
    assert len(out.read_text().splitlines()) == 20


def test_cli_raw_file_without_prompt_scores_is_one_line(tmp_path):
    out = tmp_path / "cal.jsonl"
    result = call_script("eval/calibrate.py", "--raw", write_jsonl(tmp_path / "raw.jsonl", [{"id": "a"}]),
                        "--human", write_jsonl(tmp_path / "h.jsonl", [{"id": "a", "distribution": [1, 0, 0]}]),
                        "--output", out)
    assert result.returncode == 2 and "save_raw_scores" in result.stderr and result.stderr.count("\n") == 1
    assert not out.exists()


def test_cli_human_file_covering_part_of_the_raw_items_only_when_allowed(tmp_path):
    raw, human = _raw_and_human(2)
    args = ["--raw", write_jsonl(tmp_path / "raw.jsonl", raw), "--human", write_jsonl(tmp_path / "h.jsonl", human[:15]),
            "--output", tmp_path / "cal.jsonl"]
    refused = call_script("eval/calibrate.py", *args)
    assert refused.returncode == 2 and "h.jsonl: covers 15 of the 20 items in" in refused.stderr
    assert refused.stderr.count("\n") == 1 and not (tmp_path / "cal.jsonl").exists()
    result = call_script("eval/calibrate.py", *args, "--allow_partial", "true", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["items"], report["raw_items"]) == (15, 20)
    assert [json.loads(line)["id"] for line in (tmp_path / "cal.jsonl").read_text().splitlines()] == \
        [f"i{k}" for k in range(15)]


def test_label_scores_refuse_non_finite_scores_in_the_pipeline_too():
    with pytest.raises(DataError, match=r"item x: field 'prompts\[0\]\.letter_scores': expected 3 finite numbers"):
        label_scores([{"id": "x", "prompts": [{"options": "ENC", "letter_scores": [float("inf"), 0.0, 1.0]}]}])
