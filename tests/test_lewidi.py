import json
import zipfile

import numpy as np
import pytest
from conftest import run_script

from capo.data.lewidi import lewidi_split_path, read_lewidi
from capo.errors import DataError
from capo.evaluate.lewidi import (
    aggregate_soft,
    annotator_constants,
    most_frequent_predictions,
    random_predictions,
    read_annotator_predictions,
    score,
    write_annotator_predictions,
    write_soft_predictions,
    write_submission,
)
from capo.evaluate.metrics import lewidi_nli_perspectivist, lewidi_paraphrase_soft

VEN_TEST = lewidi_split_path("ven", "test")
PAR_DEV = lewidi_split_path("par", "dev")


def _ven_row(annotators: str, annotations: dict, soft: dict) -> dict:
    return {"annotation task": "natural language inference", "text": {"context": "p", "statement": "h"},
            "number of annotators": len(annotations), "annotators": annotators,
            "number of annotations": len(annotators.split(",")), "annotations": annotations,
            "soft_label": {lab: {"0": 1 - p, "1": p} for lab, p in soft.items()}, "split": "dev", "lang": "en",
            "other_info": {"explanations": ["x"] * len(annotators.split(","))}}


def _par_row(labels: list[int]) -> dict:
    names = [f"Ann{k}" for k in range(1, 5)]
    soft = {str(v): labels.count(v) / 4 for v in range(-5, 6)}
    return {"annotation task": "paraphrase detection", "text": {"Question1": "a", "Question2": "b"},
            "number of annotators": 4, "annotators": ",".join(names), "number of annotations": 4,
            "annotations": {n: str(v) for n, v in zip(names, labels)}, "soft_label": soft, "split": "dev",
            "lang": "en", "other_info": {"explanations": ["x"] * 4}}


def _clear(src, dst, form: str = "blank"):
    """A label-less copy: `blank` as the official `*_test_clear.json` (every value ""), `absent` without the fields."""
    data = json.loads(src.read_text())
    for row in data.values():
        if form == "blank":
            row["annotations"] = {name: "" for name in row["annotations"]}
            row["soft_label"] = {k: ({"0": "", "1": ""} if isinstance(v, dict) else "") for k, v in row["soft_label"].items()}
        else:
            del row["annotations"], row["soft_label"]
    dst.write_text(json.dumps(data))
    return dst


@pytest.fixture
def tiny_ven(tmp_path):
    path = tmp_path / "ven.json"
    path.write_text(json.dumps({
        "A": _ven_row("Ann1,Ann2,Ann2", {"Ann1": "neutral", "Ann2": "contradiction,neutral"},
                      {"contradiction": 0.5, "entailment": 0.0, "neutral": 1.0}),
        "B": _ven_row("Ann1,Ann3,Ann4", {"Ann1": "entailment", "Ann3": "entailment", "Ann4": "entailment"},
                      {"contradiction": 0.0, "entailment": 1.0, "neutral": 0.0}),
    }))
    return path


def test_ven_scores_by_hand(tiny_ven, tmp_path):
    items = read_lewidi(tiny_ven)
    assert [i.annotators for i in items] == [("Ann1", "Ann2"), ("Ann1", "Ann3", "Ann4")]  # distinct, not the slots
    preds = {("A", "Ann1"): ("neutral",), ("A", "Ann2"): ("neutral",),
             ("B", "Ann1"): (), ("B", "Ann3"): ("entailment",), ("B", "Ann4"): ("contradiction", "entailment")}
    report = score(items, preds)
    # Error rate per label = wrong annotator positions / annotators, averaged over [c, e, n], then over items.
    # A: c target [0,1] pred [0,0] -> 1/2; e 0; n 0 -> 1/6.   B: c [0,0,0] vs [0,0,1] -> 1/3; e [1,1,1] vs [0,1,1]
    # -> 1/3; n 0 -> 2/9.   Mean (1/6 + 2/9) / 2 = 7/36.
    assert report["perspectivist"] == pytest.approx(7 / 36)
    # Soft aggregated from the predictions: A c 0, e 0, n 1 vs target .5, 0, 1 -> Manhattan per label 2|dp| =
    # 1, 0, 0 -> 1/3.   B c 1/3, e 2/3, n 0 vs 0, 1, 0 -> 2/3, 2/3, 0 -> 4/9.   Mean (1/3 + 4/9) / 2 = 7/18.
    assert report["soft"] == pytest.approx(7 / 18)
    # A soft file overrides the aggregation: predicting the gold presence exactly scores 0.
    write_soft_predictions(tmp_path / "soft.jsonl", {i.id: i.soft_label for i in items})
    proc = run_script("eval/lewidi.py", "score", "--dataset", "ven", "--split", tiny_ven, "--soft", tmp_path / "soft.jsonl")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["soft"] == 0 and "perspectivist" not in json.loads(proc.stdout)


def test_par_scores_by_hand(tmp_path):
    path = tmp_path / "par.json"
    path.write_text(json.dumps({"X": _par_row([5, -5, 0, 3]), "Y": _par_row([1, 1, 1, 1])}))
    items = read_lewidi(path)
    preds = {("X", "Ann1"): (4,), ("X", "Ann2"): (-5,), ("X", "Ann3"): (2,), ("X", "Ann4"): (3,),
             **{("Y", f"Ann{k}"): (-1,) for k in range(1, 5)}}
    soft = {"X": {v: float(v == 0) for v in range(-5, 6)}, "Y": {v: 0.5 * (v in (0, 2)) for v in range(-5, 6)}}
    report = score(items, preds, soft)
    # X: |5-4| + 0 + |0-2| + 0 = 3 -> 3/4/11; Y: 2 each -> 2/11. Mean (0.75 + 2) / 2 / 11 = 0.125.
    assert report["perspectivist"] == pytest.approx(0.125)
    # Wasserstein, unit bins: X moves 1/4 each from -5, 3, 5 to 0: (5 + 3 + 5) / 4 = 3.25; Y moves 1/2 from 1 to 0
    # and 1/2 from 1 to 2: 1. Mean 2.125.
    assert report["soft"] == pytest.approx(2.125)


def test_label_less_files_read_and_predict_but_do_not_score(tmp_path):
    gold = read_lewidi(VEN_TEST)
    for form in ("blank", "absent"):
        clear = read_lewidi(_clear(VEN_TEST, tmp_path / f"ven_{form}.json", form))
        assert not any(item.labelled or item.soft_label for item in clear)
        assert [(i.id, i.annotators) for i in clear] == [(i.id, i.annotators) for i in gold]
    out = tmp_path / "p.jsonl"
    proc = run_script("eval/lewidi.py", "predict", "--dataset", "ven", "--split", tmp_path / "ven_blank.json",
                      "--output", out)
    assert proc.returncode == 0, proc.stderr
    assert len(read_annotator_predictions(out, "ven")) == sum(len(i.annotators) for i in gold)
    proc = run_script("eval/lewidi.py", "score", "--dataset", "ven", "--split", tmp_path / "ven_blank.json",
                      "--predictions", out)
    assert proc.returncode == 2 and "no labels" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    par = read_lewidi(_clear(PAR_DEV, tmp_path / "par_clear.json"))
    assert len(par) == 50 and all(i.annotators == ("Ann1", "Ann2", "Ann3", "Ann4") and not i.labelled for i in par)


def test_partly_labelled_or_mismatched_files_are_refused(tmp_path, tiny_ven):
    data = json.loads(tiny_ven.read_text())
    data["B"]["annotations"] = {k: "" for k in data["B"]["annotations"]}
    (tmp_path / "half.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match="item B: field 'annotations': label-less, but item A is labelled"):
        read_lewidi(tmp_path / "half.json")
    with pytest.raises(DataError, match="a VariErrNLI file, not Paraphrase"):
        read_lewidi(tiny_ven, "par")


def test_missing_item_annotator_is_one_line_naming_the_first_gap(tmp_path):
    items = read_lewidi(VEN_TEST)
    preds = random_predictions(items, seed=1)
    third = items[2]
    del preds[(third.id, third.annotators[-1])]
    del preds[(items[7].id, items[7].annotators[0])]
    write_annotator_predictions(tmp_path / "p.jsonl", preds, "ven")
    proc = run_script("eval/lewidi.py", "score", "--dataset", "ven", "--split", "test", "--predictions", tmp_path / "p.jsonl")
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: {tmp_path / 'p.jsonl'}: item {third.id}: no prediction for annotator "
                           f"{third.annotators[-1]} (the first missing")
    assert "2 of 192 missing" in line
    # A label outside the space is located by file line.
    (tmp_path / "bad.jsonl").write_text('{"id": "1", "annotator": "Ann1", "label": 7}\n')
    proc = run_script("eval/lewidi.py", "score", "--dataset", "par", "--predictions", tmp_path / "bad.jsonl")
    assert proc.returncode == 2 and f"{tmp_path / 'bad.jsonl'}:1: item 1: field 'label'" in proc.stderr


def test_export_writes_the_official_rows(tmp_path):
    out = tmp_path / "sub"
    ven = read_lewidi(_clear(VEN_TEST, tmp_path / "VariErrNLI_test_clear.json"))
    gold = read_lewidi(VEN_TEST)
    preds = random_predictions(ven, seed=3)
    write_annotator_predictions(tmp_path / "ven.jsonl", preds, "ven")
    proc = run_script("eval/lewidi.py", "export", "--dataset", "ven", "--split", tmp_path / "VariErrNLI_test_clear.json",
                      "--predictions", tmp_path / "ven.jsonl", "--output_dir", out)
    assert proc.returncode == 0, proc.stderr
    soft_lines = (out / "VariErrNLI_test_soft.tsv").read_text().splitlines()
    pe_lines = (out / "VariErrNLI_test_pe.tsv").read_text().splitlines()
    assert [line.split("\t")[0] for line in pe_lines] == [i.id for i in ven]  # split order, no header
    pe = [json.loads(line.split("\t")[1]) for line in pe_lines]
    soft = [json.loads(line.split("\t")[1]) for line in soft_lines]
    for item, row, srow in zip(ven, pe, soft):
        assert np.shape(row) == (3, len(item.annotators)) and np.shape(srow) == (3, 2)
        assert row[0] == [int("contradiction" in preds[(item.id, a)]) for a in item.annotators]  # [c, e, n] order
        assert all(q + p == pytest.approx(1) for q, p in srow)
        assert srow[2][1] == pytest.approx(np.mean(row[2]))  # the neutral share of the annotators
    # Scoring the exported rows with the metric itself gives what `score` gives for the predictions.
    targets = [[[int(lab in i.labels[a]) for a in i.annotators] for lab in ("contradiction", "entailment", "neutral")]
               for i in gold]
    assert lewidi_nli_perspectivist(targets, pe) == pytest.approx(score(gold, preds)["perspectivist"])

    par = read_lewidi(_clear(PAR_DEV, tmp_path / "par_clear.json"))
    par_preds = random_predictions(par, seed=0)
    write_annotator_predictions(tmp_path / "par.jsonl", par_preds, "par")
    proc = run_script("eval/lewidi.py", "export", "--dataset", "par", "--split", tmp_path / "par_clear.json",
                      "--predictions", tmp_path / "par.jsonl", "--output_dir", out)
    assert proc.returncode == 0, proc.stderr
    par_soft = [json.loads(line.split("\t")[1]) for line in (out / "Paraphrase_test_soft.tsv").read_text().splitlines()]
    par_pe = [json.loads(line.split("\t")[1]) for line in (out / "Paraphrase_test_pe.tsv").read_text().splitlines()]
    assert par_pe[0] == [par_preds[(par[0].id, f"Ann{k}")][0] for k in range(1, 5)]
    assert all(len(r) == 11 and sum(r) == pytest.approx(1) for r in par_soft)
    gold_par = read_lewidi(PAR_DEV)
    assert lewidi_paraphrase_soft([[i.soft_label[v] for v in range(-5, 6)] for i in gold_par], par_soft) == \
        pytest.approx(score(gold_par, par_preds)["soft"])
    with zipfile.ZipFile(out / "res.zip") as archive:  # one flat archive for both datasets
        assert sorted(archive.namelist()) == ["Paraphrase_test_pe.tsv", "Paraphrase_test_soft.tsv",
                                              "VariErrNLI_test_pe.tsv", "VariErrNLI_test_soft.tsv"]
    short = write_submission(tmp_path / "short", ven, preds, naming="short", zip_name=None)
    assert [p.name for p in short] == ["ven_test_soft.tsv", "ven_test_pe.tsv"]
    assert short[1].read_text() == (out / "VariErrNLI_test_pe.tsv").read_text()


def test_incomplete_predictions_write_no_submission(tmp_path):
    items = read_lewidi(VEN_TEST)
    preds = random_predictions(items)
    del preds[(items[-1].id, items[-1].annotators[0])]
    with pytest.raises(DataError, match=f"item {items[-1].id}: no prediction for annotator"):
        write_submission(tmp_path / "sub", items, preds)
    assert not (tmp_path / "sub").exists()


def test_most_frequent_baseline_reproduces_the_published_ven_test_score():
    train, test = read_lewidi(lewidi_split_path("ven", "train")), read_lewidi(VEN_TEST)
    # Each annotator's train label-presence cells are mostly 0 (one label of three), so the constant is the empty set.
    for annotator, constant in annotator_constants(train, "value").items():
        cells = [int(lab in i.labels[annotator]) for i in train if annotator in i.annotators
                 for lab in ("contradiction", "entailment", "neutral")]
        assert constant == () and sum(cells) < len(cells) / 2
    preds = most_frequent_predictions(train, test, "value")
    assert round(score(test, preds)["perspectivist"], 3) == 0.345  # LeWiDi 2025 overview paper, VEN test
    # The label-level readings of "most frequent" do not give the published number.
    for vote in ("set", "label"):
        assert round(score(test, most_frequent_predictions(train, test, vote))["perspectivist"], 3) != 0.345


def test_par_most_frequent_is_each_annotators_mode():
    train = read_lewidi(lewidi_split_path("par", "train"))
    constants = annotator_constants(train)
    for annotator, (label,) in constants.items():
        counts = np.bincount([i.labels[annotator][0] + 5 for i in train], minlength=11)
        assert counts[label + 5] == counts.max()
    dev = read_lewidi(PAR_DEV)
    preds = most_frequent_predictions(train, dev)
    assert set(preds) == {(i.id, a) for i in dev for a in i.annotators}
    assert aggregate_soft(dev, preds)[dev[0].id][constants["Ann1"][0]] >= 0.25


def test_random_baseline_is_seeded_and_uniform():
    ven, par = read_lewidi(VEN_TEST), read_lewidi(PAR_DEV)
    assert random_predictions(ven, 5) == random_predictions(ven, 5) != random_predictions(ven, 6)
    ven_mean = np.mean([score(ven, random_predictions(ven, s))["perspectivist"] for s in range(20)])
    assert abs(ven_mean - 0.497) < 0.02  # the published VEN test random baseline (a fair coin per cell: 0.5)
    # Par: the expectation of |target - U(-5..5)| / 11, item by item, against the mean over seeds.
    expected = np.mean([np.mean([np.mean([abs(i.labels[a][0] - v) for v in range(-5, 6)]) for a in i.annotators]) / 11
                        for i in par])
    par_mean = np.mean([score(par, random_predictions(par, s))["perspectivist"] for s in range(20)])
    assert abs(par_mean - expected) < 0.02


def test_help_documents_all_three_commands():
    proc = run_script("eval/lewidi.py", "--help")
    assert proc.returncode == 0
    for command, flag in (("predict", "--baseline"), ("score", "--predictions"), ("export", "--naming")):
        assert f"usage: eval/lewidi.py {command}" in proc.stdout and flag in proc.stdout
    assert run_script("eval/lewidi.py", "bogus").returncode == 2
