"""Malformed input: one line naming the file, the line or item, and the field; non-zero exit; nothing written."""

import json
from pathlib import Path

import pytest
from conftest import run_script, write_jsonl

from capo.data.loaders import (
    load_items_jsonl,
    load_lewidi,
    load_lewidi_annotators_meta,
    load_nli341,
    load_varierr,
    read_distributions,
)
from capo.errors import DataError

GOOD = {
    "id": "q1",
    "task": "nli",
    "inputs": {"premise": "A man sleeps.", "hypothesis": "A person rests."},
    "annotations": [{"annotator": "A1", "label": "entailment", "explanation": "Sleeping is resting."}],
    "distributions": {"chaosnli": [0.7, 0.2, 0.1]},
}


def _with(**changes):
    row = json.loads(json.dumps(GOOD))
    for dotted, value in changes.items():
        target, *keys = [row, *dotted.split("__")]
        for key in keys[:-1]:
            target = target[int(key)] if key.isdigit() else target[key]
        target[keys[-1]] = value
    return row


CASES = [
    ("malformed json", ['{"id": "q1", "task": '], r"items.jsonl:2: malformed JSON"),
    ("missing field", [{k: v for k, v in GOOD.items() if k != "task"}], r"items.jsonl:2: item q1: field 'task': missing field"),
    ("unknown task", [_with(task="sentiment")], r"item q1: field 'task': unknown task 'sentiment' \(valid: nli, paraphrase\)"),
    ("unknown label", [_with(annotations__0__label="maybe")], r"item q1: field 'annotations\[0\].label': unknown label 'maybe'"),
    ("unknown annotator", [_with(annotations__0__annotator="A7")], r"field 'annotations\[0\].annotator': unknown annotator 'A7'"),
    ("empty explanation", [_with(annotations__0__explanation="   ")], r"field 'annotations\[0\].explanation': empty explanation"),
    ("distribution sum", [_with(distributions={"chaosnli": [0.5, 0.2, 0.1]})], r"field 'distributions.chaosnli': distribution sums to 0.8, not 1"),
    ("distribution length", [_with(distributions={"chaosnli": [0.5, 0.5]})], r"field 'distributions.chaosnli': expected 3 values, got 2"),
    ("negative probability", [_with(distributions={"chaosnli": [1.2, -0.2, 0.0]})], r"values must be finite and non-negative"),
    ("missing input", [_with(inputs={"premise": "x"})], r"field 'inputs.hypothesis': missing or empty input text"),
    ("duplicate id", [GOOD, GOOD], r"items.jsonl:3: item q1: field 'id': duplicate item id"),
    ("not an object", ["[1, 2]"], r"items.jsonl:2: expected a JSON object, got list"),
    ("annotations not a list", [_with(annotations={"A1": "x"})], r"item q1: field 'annotations': expected list, got dict"),
    ("distributions not an object", [_with(distributions=[0.2, 0.8])], r"field 'distributions': expected dict, got list"),
    ("error labels not a list", [_with(error_labels="neutral")], r"field 'error_labels': expected list, got str"),
]


@pytest.mark.parametrize("name,rows,pattern", CASES, ids=[c[0] for c in CASES])
def test_bring_your_own_errors_are_one_located_line(tmp_path, name, rows, pattern):
    path = write_jsonl(tmp_path / "items.jsonl", [GOOD | {"id": "q0"}, *rows])
    with pytest.raises(DataError, match=pattern) as info:
        load_items_jsonl(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_varierr_bad_reason_and_annotator(tmp_path):
    row = json.loads(Path(load_varierr.__defaults__[0]).read_text().splitlines()[0])
    row["neutral"] = [dict(row["entailment"][0], reason="")]
    with pytest.raises(DataError, match=r"varierr.jsonl:1: item 23751e: field 'neutral\[0\].reason': empty explanation"):
        load_varierr(write_jsonl(tmp_path / "varierr.jsonl", [row]))
    row["neutral"] = [dict(row["entailment"][0], annotator=7)]
    with pytest.raises(DataError, match=r"field 'neutral\[0\].annotator': unknown annotator 7"):
        load_varierr(write_jsonl(tmp_path / "varierr.jsonl", [row]))
    row["neutral"] = [dict(row["entailment"][0], judgments=["yes"])]
    with pytest.raises(DataError, match=r"field 'neutral\[0\].judgments\[0\]': expected an object"):
        load_varierr(write_jsonl(tmp_path / "varierr.jsonl", [row]))
    row["neutral"], row["idk"] = [], ["A2"]
    with pytest.raises(DataError, match=r"item 23751e: field 'idk\[0\]': unknown annotator 'A2'"):
        load_varierr(write_jsonl(tmp_path / "varierr.jsonl", [row]))


def test_lewidi_misaligned_explanations(tmp_path):
    record = {
        "annotation task": "natural language inference",
        "text": {"context": "c", "statement": "s"},
        "annotators": "Ann1,Ann2",
        "annotations": {"Ann1": "neutral", "Ann2": "entailment"},
        "other_info": {"explanations": ["only one"]},
    }
    path = tmp_path / "ven.json"
    path.write_text(json.dumps({"42": record}))
    with pytest.raises(DataError, match=r"ven.json: item 42: field 'other_info.explanations': 1 explanations for 2 annotator slots"):
        load_lewidi(path)


def test_meta_file_that_is_broken_beyond_trailing_commas(tmp_path):
    path = tmp_path / "meta.json"
    path.write_text('{\n "Ann1": {"Age": "26",},\n "Ann2": {"Age": 30\n}')
    with pytest.raises(DataError, match=r"meta.json:\d+: malformed JSON"):
        load_lewidi_annotators_meta(path)


def test_nli341_bad_chaos_probs(tmp_path):
    row = json.loads(Path(load_nli341.__defaults__[0]).read_text().splitlines()[0])
    row["chaos probs"] = [0.3, 0.3, 0.3]
    with pytest.raises(DataError, match=r"nli.jsonl:1: item 61429c: field 'chaos probs': distribution sums to 0.9"):
        load_nli341(write_jsonl(tmp_path / "nli.jsonl", [row]))


def test_distribution_file_errors(tmp_path):
    with pytest.raises(DataError, match=r"d.jsonl:2: field 'id': missing or invalid id"):
        read_distributions(write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "distribution": [1, 0, 0]}, {"distribution": [1, 0, 0]}]))
    with pytest.raises(DataError, match=r"d.jsonl:2: item a: field 'id': duplicate id"):
        read_distributions(write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "distribution": [1, 0, 0]}] * 2))
    with pytest.raises(DataError, match=r"missing.jsonl: file not found"):
        read_distributions(tmp_path / "missing.jsonl")


def test_cli_reports_one_line_and_exit_2_and_writes_nothing(tmp_path):
    human = write_jsonl(tmp_path / "h.jsonl", [{"id": "a", "distribution": [0.5, 0.5, 0]}, {"id": "b", "distribution": [0, 0, 1]}])
    model = write_jsonl(tmp_path / "m.jsonl", [{"id": "a", "distribution": [0.5, 0.5, 0]}, {"id": "c", "distribution": [0.2, 0.2, 0.6]}])
    out_csv = tmp_path / "table.csv"
    proc = run_script("eval/distributions.py", "--human", human, "--model", model, "--csv", out_csv)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert proc.stderr.startswith("error: ids do not match: 2 mismatched, e.g. 'b' is in") and "Traceback" not in proc.stderr
    assert not out_csv.exists()
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"id": "a", "distribution": [0.5, 0.6, 0]}])
    proc = run_script("eval/distributions.py", "--human", human, "--model", bad)
    assert proc.returncode == 2 and "bad.jsonl:1: item a: field 'distribution': distribution sums to 1.1" in proc.stderr
