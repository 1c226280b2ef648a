"""The study report (`eval/study_report.py`, `capo.study.report`) on two tiny synthetic slices whose judge
attributions are known by hand: 6 items x 4 targets per source and seed, one response each."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import call_script
from scipy.stats import bootstrap

from capo.errors import DataError
from capo.evaluate.intervals import cluster_bootstrap
from capo.study.report import attribution, paired_difference, per_item, read_slices

ITEMS = [f"i{k}" for k in range(6)]
ANNOTATORS = ["A1", "A2", "A3", "A4"]
LABELS = ["entailment", "neutral", "contradiction"]
# (source, seed) -> the items on which the char judge attributes every target correctly (wrong on the others)
CORRECT = {("human", 0): 4, ("human", 1): 4, ("sft", 0): 3, ("sft", 1): 3, ("capo", 0): 5, ("capo", 1): 6,
           ("sft_5", 0): 1, ("sft_5", 1): 1}
SOURCES = {"sft": ("sft", 10), "capo": ("capo", 14), "pseudo": ("pseudo_capo", 14), "sft_5": ("sft_curve", 5)}
HAND = {"human": 16 / 24, "sft": 12 / 24, "capo": (20 / 24 + 1) / 2, "pseudo_capo": 0.25}


def _vector(target: str, right: bool, always_a1: bool = False) -> list[float]:
    k = 0 if always_a1 else ANNOTATORS.index(target) if right else (ANNOTATORS.index(target) + 1) % 4
    return [-0.1 if j == k else -3.0 for j in range(4)]


def _text(source: str, item: int, target: str) -> str:
    if source == "capo":
        return f"maybe maybe maybe maybe {target} says item {item}"
    return f"{target} reads item {item} and the premise {source} in words of its own"


def write_slice(root: Path, seed: int) -> Path:
    folder = root / f"nli_s{seed}"
    folder.mkdir(parents=True)
    meta = {"task": "nli", "seed": seed, "dataset": "varierr", "heldout_split": "test", "items": ITEMS,
            "labels": LABELS, "annotators": ANNOTATORS,
            "judges": {j: {"features": "char", "reduce": j == "reduced", "with_label": True, "train_items": "all",
                           "description": j} for j in ("char", "reduced")},
            "sources": {n: {"kind": k, "step": s, "rows": 80, "description": n} for n, (k, s) in SOURCES.items()},
            "commands": ["python recipes/study.py"], "precision": "fp32", "machine": "test", "wall_s": {"sft": 12.5}}
    (folder / "slice.json").write_text(json.dumps(meta))
    rows, probs = [], []
    for source in ["human", *SOURCES]:
        for k, item in enumerate(ITEMS):
            for a, target in enumerate(ANNOTATORS):
                right = k < CORRECT.get((source, seed), 0)
                judge = {"char": _vector(target, right, always_a1=source == "pseudo"),
                         "reduced": _vector(target, False, always_a1=True)}
                rows.append({"source": source, "target": target, "item_id": item, "sample": 0,
                             "label": LABELS[(k + a) % 3], "explanation": _text(source, k, target), "parsed": True,
                             "judge": judge})
                if source != "human":
                    probs.append({"source": source, "target": target, "item_id": item,
                                  "probs": [0.5, 0.3, 0.2] if source == "sft" else [0.2, 0.5, 0.3]})
    (folder / "responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in probs))
    return folder


@pytest.fixture
def slices(tmp_path) -> Path:
    root = tmp_path / "slices"
    for seed in (0, 1):
        write_slice(root, seed)
    return root


def test_attribution_equals_the_hand_values(slices):
    study = read_slices(slices)
    assert list(study) == ["nli"] and list(study["nli"]) == [0, 1]
    seeds = study["nli"]
    for key, value in HAND.items():
        got = attribution(seeds, key, "char")
        assert got.value == pytest.approx(value), key
        assert got.low <= got.value <= got.high and got.n_items == 6 and got.n_seeds == 2
    assert attribution(seeds, "sft", "reduced").value == pytest.approx(0.25)  # always A1: one target of four


def test_the_interval_resamples_items_not_responses(slices):
    seeds = read_slices(slices)["nli"]
    rows = seeds[0].responses["sft"]  # 3 items all right, 3 all wrong: 4 responses per item move together
    clustered = cluster_bootstrap([per_item(rows, "char", ANNOTATORS)], seed=0)
    hits = np.array([float(np.argmax(r["judge"]["char"]) == ANNOTATORS.index(r["target"])) for r in rows])
    naive = bootstrap((hits,), np.mean, n_resamples=2000, method="percentile", rng=np.random.default_rng(0))
    naive_width = naive.confidence_interval.high - naive.confidence_interval.low
    assert clustered.value == pytest.approx(0.5)
    assert clustered.high - clustered.low >= naive_width
    assert clustered.high - clustered.low > 1.5 * naive_width  # about twice: 6 clusters, not 24 responses


def test_paired_difference(slices):
    seeds = read_slices(slices)["nli"]
    same = paired_difference(seeds, "capo", "capo", "char")
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)
    diff = paired_difference(seeds, "capo", "sft", "char")
    assert diff.value == pytest.approx(HAND["capo"] - HAND["sft"])
    assert 0 < diff.low <= diff.value <= diff.high


def _run(slices: Path, out: Path):
    return call_script("eval/study_report.py", "--slices", slices, "--output", out / "report.md",
                       "--figures", out / "fig")


def test_cli_writes_the_report_and_figures_the_same_bytes_twice(slices, tmp_path):
    done = _run(slices, tmp_path / "out")
    assert done.returncode == 0, done.stderr
    report = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    pngs = sorted(p.name for p in (tmp_path / "out" / "fig").glob("*.png"))
    assert pngs == ["attribution_nli.png", "confusion_nli_char.png", "confusion_nli_reduced.png", "curve_nli.png"]
    for name in pngs:
        assert f"](fig/{name})" in report
    lines = report.splitlines()
    row = {}
    for line in lines:
        if line.startswith("| "):
            row.setdefault(line.split(" | ")[0].strip("| "), line)
    assert "0.917" in row["capo"] and "†" in row["capo"].split(" | ")[1]  # above the human ceiling 0.667: flagged
    assert "0.500" in row["sft"] and "†" not in row["sft"] and "0.667" in row["human"]
    assert any(line.startswith("† above the human ceiling") for line in lines)
    assert "| capo − sft | 0.417" in report
    assert "| capo − sft, seed 0 | 0.333" in report and "| capo − sft, seed 1 | 0.500" in report  # 5/6 - 3/6, 1 - 3/6
    assert "**nli: only seed(s) 0, 1; the issue asks for at least 3 seeds.**" in report
    assert "**paraphrase: no slice" in report
    assert "python eval/study_report.py --slices" in report and "pools slices nli_s0, nli_s1 (seeds 0, 1)" in report
    control = next(line for line in lines if line.startswith("| pseudo_capo | char |"))
    assert "0.250" in control and control.endswith("| yes |")
    assert "_uniform_" in report and "_best one label_" in report  # label behaviour's reference bands
    # diagnostics: capo repeats "maybe maybe maybe" in every response
    capo_diag = [line for line in lines if line.startswith("| capo |")][-1]
    assert capo_diag.split(" | ")[-1].rstrip(" |") == "1.000"
    again = _run(slices, tmp_path / "out2")
    assert again.returncode == 0
    assert (tmp_path / "out2" / "report.md").read_bytes().replace(b"out2", b"out") == report.encode()
    done = _run(slices, tmp_path / "out")
    assert (tmp_path / "out" / "report.md").read_text(encoding="utf-8") == report


def _edit_line(path: Path, number: int, change) -> None:
    lines = path.read_text().splitlines()
    row = json.loads(lines[number - 1])
    change(row)
    lines[number - 1] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("case", ["no_slice_json", "unknown_source", "unknown_item", "judge_length"])
def test_bad_input_is_one_located_line(slices, tmp_path, case):
    responses = slices / "nli_s1" / "responses.jsonl"
    if case == "no_slice_json":
        (slices / "nli_s1" / "slice.json").unlink()
        where = f"{slices / 'nli_s1' / 'slice.json'}: slice folder without slice.json"
    elif case == "unknown_source":
        _edit_line(responses, 3, lambda r: r.update(source="gpt"))
        where = f"{responses}:3: field 'source': unknown source 'gpt'"
    elif case == "unknown_item":
        _edit_line(responses, 7, lambda r: r.update(item_id="zz"))
        where = f"{responses}:7: field 'item_id': unknown item_id 'zz'"
    else:
        _edit_line(responses, 30, lambda r: r["judge"].update(char=[0.0, 0.0]))
        where = f"{responses}:30: field 'judge': expected"
    with pytest.raises(DataError, match="^" + where.replace("(", r"\(")):
        read_slices(slices)
    done = _run(slices, tmp_path / "out")
    assert done.returncode == 2 and done.stderr.startswith("error: " + where) and done.stderr.count("\n") == 1
    assert not (tmp_path / "out" / "report.md").exists()
