import json
import zipfile

import numpy as np
import pytest
from conftest import call_script

from capo.data.formats.lewidi import lewidi_split_path, read_lewidi
from capo.errors import DataError
from capo.evaluate.distributions.metrics import lewidi_nli_perspectivist, lewidi_paraphrase_soft
from capo.lewidi.baselines import annotator_constants, most_frequent_predictions, random_predictions
from capo.lewidi.predictions import (
    aggregate_soft,
    read_annotator_predictions,
    write_annotator_predictions,
    write_soft_predictions,
)
from capo.lewidi.score import score
from capo.lewidi.submission import write_submission

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
    proc = call_script("eval/lewidi.py", "score", "--dataset", "ven", "--split", tiny_ven, "--soft", tmp_path / "soft.jsonl")
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
    proc = call_script("eval/lewidi.py", "predict", "--dataset", "ven", "--split", tmp_path / "ven_blank.json",
                      "--output", out)
    assert proc.returncode == 0, proc.stderr
    assert len(read_annotator_predictions(out, "ven")) == sum(len(i.annotators) for i in gold)
    proc = call_script("eval/lewidi.py", "score", "--dataset", "ven", "--split", tmp_path / "ven_blank.json",
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
    proc = call_script("eval/lewidi.py", "score", "--dataset", "ven", "--split", "test", "--predictions", tmp_path / "p.jsonl")
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: {tmp_path / 'p.jsonl'}: item {third.id}: no prediction for annotator "
                           f"{third.annotators[-1]} (the first missing")
    assert "2 of 192 missing" in line
    # A label outside the space is located by file line.
    (tmp_path / "bad.jsonl").write_text('{"id": "1", "annotator": "Ann1", "label": 7}\n')
    proc = call_script("eval/lewidi.py", "score", "--dataset", "par", "--predictions", tmp_path / "bad.jsonl")
    assert proc.returncode == 2 and f"{tmp_path / 'bad.jsonl'}:1: item 1: field 'label'" in proc.stderr


def test_export_writes_the_official_rows(tmp_path):
    out = tmp_path / "sub"
    ven = read_lewidi(_clear(VEN_TEST, tmp_path / "VariErrNLI_test_clear.json"))
    gold = read_lewidi(VEN_TEST)
    preds = random_predictions(ven, seed=3)
    write_annotator_predictions(tmp_path / "ven.jsonl", preds, "ven")
    proc = call_script("eval/lewidi.py", "export", "--dataset", "ven", "--split", tmp_path / "VariErrNLI_test_clear.json",
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
    proc = call_script("eval/lewidi.py", "export", "--dataset", "par", "--split", tmp_path / "par_clear.json",
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
    proc = call_script("eval/lewidi.py", "--help")
    assert proc.returncode == 0
    for command, flag in (("predict", "--baseline"), ("score", "--predictions"), ("export", "--naming")):
        assert f"usage: eval/lewidi.py {command}" in proc.stdout and flag in proc.stdout
    assert call_script("eval/lewidi.py", "bogus").returncode == 2


def test_the_script_parses_as_the_pipeline_launches_it_and_writes_what_it_prints(tmp_path, capsys):
    """`parse` is (command, arguments), as `capo.pipeline.launch.Job` runs it; the pipeline reads the printed report
    (predict --report_output) and the scores (score --output) from files, so both must be what the script prints."""
    from conftest import load_script

    from capo.lewidi.commands import ScoreArguments

    cli = load_script("eval/lewidi.py")
    command, args = cli.parse(["score", "--dataset", "ven", "--split", "test", "--predictions", "p.jsonl"])
    assert command == "score" and isinstance(args, ScoreArguments) and args.predictions == "p.jsonl"
    with pytest.raises(DataError, match="no command given"):
        cli.parse([])
    where = ["--dataset", "ven", "--split", "test"]
    predictions, report, scores = tmp_path / "mf.jsonl", tmp_path / "mf_report.json", tmp_path / "mf_scores.json"
    printed = cli.main(["predict", *where, "--output", str(predictions), "--report_output", str(report)])
    assert json.loads(report.read_text()) == printed and printed["predictions"] == 192
    printed = cli.main(["score", *where, "--predictions", str(predictions), "--output", str(scores)])
    assert json.loads(scores.read_text()) == printed and round(printed["perspectivist"], 3) == 0.345
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli.main(["predict", *where, "--output", str(predictions), "--report_output", str(predictions)])
    assert "field 'report_output': names the same file as another output" in capsys.readouterr().err


# --- explainers as annotators (`--model`): capo/lewidi/explainers.py --------------------------------


def _subset(src, dst, keys) -> str:
    """A LeWiDi split file holding only `keys` of `src` (real items, so VEN items keep their VariErr ids)."""
    data = json.loads(src.read_text())
    dst.write_text(json.dumps({k: data[k] for k in keys}))
    return str(dst)


def _manifest(folder, annotator: str, item_ids, dataset: str = "lewidi-ven", split_seed: int = 0) -> None:
    from capo.data.datasets import load_task_data
    from capo.data.heldout import training_record
    from capo.io import write_json

    data = load_task_data("nli", dataset, split_seed)
    write_json(folder / "run_manifest.json", {"stage": "sft", "training_data": training_record(data, annotator, item_ids)})


@pytest.fixture(scope="module")
def explainers(corpus_lm, tmp_path_factory):
    """Four different random LoRA adapters A1..A4 trained (by their manifests) on LeWiDi VEN train, a leaky one
    trained on VariErr split seed 0, and tiny VEN dev/test and Par dev splits of real items."""
    from conftest import make_adapter

    from capo.data.datasets import load_task_data

    root = tmp_path_factory.mktemp("lw-explainers")
    train_ids = [i.id for i in load_task_data("nli", "lewidi-ven").items("train")]
    for k, annotator in enumerate(("A1", "A2", "A3", "A4")):
        make_adapter(corpus_lm, root / "ok" / annotator, seed=10 + k)
        _manifest(root / "ok" / annotator, annotator, train_ids)
    varierr_train = {i.id for i in load_task_data("nli", "varierr").items("train")}
    for annotator in ("A1", "A2", "A3", "A4"):
        make_adapter(corpus_lm, root / "leaky" / annotator, seed=1)
        _manifest(root / "leaky" / annotator, annotator, sorted(varierr_train), dataset="varierr")
    test = read_lewidi(VEN_TEST)
    from capo.data.formats.lewidi import capo_item

    clean = [i.id for i in test if capo_item(i).id not in varierr_train][:2]
    assert any({"Ann1", "Ann2"} <= set(i.annotators) for i in test if i.id in clean)
    leaked = [i.id for i in test if capo_item(i).id in varierr_train][:1]
    assert len(clean) == 2 and leaked, "VariErr split seed 0 trains on most, not all, VEN test items"
    dev = read_lewidi(lewidi_split_path("ven", "dev"))[:4]
    files = {
        "ven_dev": _subset(lewidi_split_path("ven", "dev"), root / "ven_dev.json", [i.id for i in dev]),
        "ven_test": _subset(VEN_TEST, root / "ven_test.json", clean),
        "ven_test_leaky": _subset(VEN_TEST, root / "ven_test_leaky.json", clean + leaked),
        "par_dev": _subset(PAR_DEV, root / "par_dev.json", [i.id for i in read_lewidi(PAR_DEV)[:4]]),
        "n_leaked": 1 + sum(capo_item(i).id in varierr_train for i in dev),
    }
    return {"template": str(root / "ok" / "{annotator}"), "leaky": str(root / "leaky" / "{annotator}"),
            "root": root, **files}


def _predict(argv: list[str]) -> dict:
    from conftest import load_script

    return load_script("eval/lewidi.py").main(["predict", *map(str, argv)])


def _probs(path) -> dict:
    return {(r["id"], r["annotator"]): r["probs"] for r in map(json.loads, open(path))}


def _direct(corpus_lm, adapter, item, persona=None) -> np.ndarray:
    """P(label) in capo's [E, N, C] order under one adapter, straight from the engine (one adapter loaded)."""
    from scipy.special import softmax

    from capo.data.formats.lewidi import capo_item
    from capo.data.prompts import prompt_messages, render_chat
    from capo.generate.backends.hf import HFBackend
    from capo.generate.scoring import label_log_probs

    backend = HFBackend(str(corpus_lm), {"x": adapter} if adapter else {}, dtype="float32")
    task = "nli" if item.dataset == "ven" else "paraphrase"
    labels = ["entailment", "neutral", "contradiction"] if task == "nli" else [str(v) for v in range(-5, 6)]
    prompt = render_chat(backend.tokenizer, prompt_messages(capo_item(item), annotator=persona)) + "Label:"
    logp = label_log_probs(backend.scorer, backend.tokenizer, [prompt], [" " + lab for lab in labels],
                           "x" if adapter else None)
    return softmax(logp[0])


def test_scoring_prompt_ends_where_the_trained_label_starts(corpus_lm, smollm2):
    """The scored tokens (prompt + ' ' + label) are exactly the start of an SFT row's prompt + completion tokens."""
    from transformers import AutoTokenizer

    from capo.data.datasets import load_task_data
    from capo.data.prompts import prompt_messages, response_messages
    from capo.generate.labels import label_options, scoring_prompt
    from capo.train.pairs import split_prompt_completion

    for path in (corpus_lm, smollm2):
        tokenizer = AutoTokenizer.from_pretrained(path)
        for task in ("nli", "paraphrase"):
            item = load_task_data(task).items("train")[0]
            for label, option in zip(item.label_space.labels, label_options(task)):
                prompt_ids, completion = split_prompt_completion(
                    tokenizer, prompt_messages(item), response_messages(label, "Because."))
                scored = tokenizer(scoring_prompt(tokenizer, item) + option, add_special_tokens=False)["input_ids"]
                assert scored == (prompt_ids + completion)[: len(scored)]
                assert tokenizer.decode(scored[len(prompt_ids):]) == "Label: " + label


def test_explainers_predict_ven_test_with_the_threshold_fitted_on_dev(corpus_lm, explainers, tmp_path):
    from capo.generate.labels import LabelScorer, resolve_explainers
    from capo.lewidi.explainers import lewidi_probabilities
    from capo.lewidi.perspectivist import choose_on_dev, decide, mean_soft
    from capo.lewidi.predictions import check_complete, read_soft_predictions

    out = tmp_path / "ven_test.jsonl"
    test_items = read_lewidi(explainers["ven_test"])
    report = _predict(["--dataset", "ven", "--split", explainers["ven_test"], "--decision_split",
                       explainers["ven_dev"], "--model", corpus_lm, "--explainers", explainers["template"],
                       "--output", out])
    predictions = read_annotator_predictions(out, "ven")
    check_complete(test_items, predictions, out)
    assert report["predictor"] == "explainer" and report["decision_source"] == "fitted"
    assert report["decision_fit"] == f"fitted on all of {explainers['ven_dev']}" and "fold_decisions" not in report
    assert report["scores"] == score(test_items, predictions)  # scoreable, and scored as written
    probs = _probs(tmp_path / "ven_test_probs.jsonl")
    assert set(probs) == set(predictions) and all(sum(p) == pytest.approx(1, abs=1e-5) for p in probs.values())
    # The threshold is the dev-best one, and the test labels are that threshold applied to the test probabilities.
    dev_items = read_lewidi(explainers["ven_dev"])
    scorer = LabelScorer(str(corpus_lm), resolve_explainers(explainers["template"], "nli", ["A1", "A2", "A3", "A4"]))
    dev_rows, dev_probs = lewidi_probabilities(scorer, dev_items)
    assert report["decision"] == choose_on_dev(dev_items, dev_rows, dev_probs, "ven")[0]
    rows = [{"id": k, "annotator": a} for k, a in probs]
    assert decide(rows, np.array(list(probs.values())), "ven", report["decision"]) == predictions
    soft_mean = read_soft_predictions(tmp_path / "ven_test_soft_mean.jsonl", "ven")
    expected = mean_soft(test_items, rows, np.array(list(probs.values())))
    assert all(soft_mean[k][lab] == pytest.approx(expected[k][lab], abs=1e-5) for k in expected for lab in expected[k])
    assert read_soft_predictions(tmp_path / "ven_test_soft.jsonl", "ven") == aggregate_soft(test_items, predictions)
    # Ann2 is scored under A2's adapter (VEN_LABELS order: contradiction, entailment, neutral), Ann1 under A1's.
    item = next(i for i in test_items if {"Ann1", "Ann2"} <= set(i.annotators))
    for name in ("Ann1", "Ann2"):
        e, n, c = _direct(corpus_lm, explainers["template"].format(annotator="A" + name[3:]), item)
        np.testing.assert_allclose(probs[(item.id, name)], [c, e, n], atol=1e-5)
    assert np.abs(np.subtract(probs[(item.id, "Ann1")], probs[(item.id, "Ann2")])).max() > 1e-4


def test_explainers_predict_par_dev_with_the_rule_cross_fitted_over_dev_folds(corpus_lm, explainers, tmp_path):
    from capo.lewidi.perspectivist import PAR_DECISIONS, crossfit_choices, decide_per_item, par_labels
    from capo.lewidi.predictions import check_complete

    items = read_lewidi(explainers["par_dev"])
    out = tmp_path / "par.jsonl"
    report = _predict(["--dataset", "par", "--split", explainers["par_dev"], "--decision_split",
                       explainers["par_dev"], "--model", corpus_lm, "--explainers", explainers["template"],
                       "--output", out])
    predictions = read_annotator_predictions(out, "par")
    check_complete(items, predictions, out)
    assert report["decision"] in PAR_DECISIONS and set(report["dev_choices"]) == set(PAR_DECISIONS)
    assert report["dev_choices"][report["decision"]] == min(report["dev_choices"].values())
    # dev scored with itself as the decision split: each item's rule is fitted on the other items (4 items, 4 folds)
    assert report["decision_source"] == "cross-fitted" and report["decision_folds"] == 4
    assert report["decision_fit"] == f"cross-fitted over 4 folds of {explainers['par_dev']}"
    probs = _probs(tmp_path / "par_probs.jsonl")
    rows, matrix = [{"id": k, "annotator": a} for k, a in probs], np.array(list(probs.values()))
    assert predictions == decide_per_item(rows, matrix, "par", crossfit_choices(items, rows, matrix, "par")[0])
    assert report["scores"] == score(items, predictions)
    assert all(len(p) == 11 and sum(p) == pytest.approx(1, abs=1e-5) for p in probs.values())
    item = items[1]
    np.testing.assert_allclose(probs[(item.id, "Ann3")], _direct(corpus_lm, explainers["template"].format(
        annotator="A3"), item), atol=1e-5)
    # A fixed rule is applied as given.
    fixed = _predict(["--dataset", "par", "--split", explainers["par_dev"], "--decision", "median", "--model",
                      corpus_lm, "--explainers", explainers["template"], "--output", tmp_path / "median.jsonl"])
    assert fixed["decision"] == "median" and fixed["decision_source"] == "fixed"
    median = read_annotator_predictions(tmp_path / "median.jsonl", "par")
    assert list(median.values()) == par_labels(np.array(list(probs.values())), "median")


def test_base_and_conditioned_predictors(corpus_lm, explainers, tmp_path):
    items = read_lewidi(explainers["ven_dev"])[:2]
    split = _subset(lewidi_split_path("ven", "dev"), tmp_path / "dev2.json", [i.id for i in items])
    base = _predict(["--dataset", "ven", "--split", split, "--decision_split", split, "--model", corpus_lm,
                     "--output", tmp_path / "base.jsonl"])
    assert base["predictor"] == "base"
    probs = _probs(tmp_path / "base_probs.jsonl")
    for item in items:  # the base model: one prompt, one answer for every annotator
        assert all(probs[(item.id, a)] == probs[(item.id, item.annotators[0])] for a in item.annotators)
    np.testing.assert_allclose(probs[(items[0].id, items[0].annotators[0])][1], _direct(corpus_lm, None, items[0])[0],
                               atol=1e-5)
    one = explainers["template"].format(annotator="A3")  # no {annotator}: one conditioned adapter for everyone
    cond = _predict(["--dataset", "ven", "--split", split, "--decision_split", split, "--model", corpus_lm,
                     "--explainers", one, "--output", tmp_path / "cond.jsonl"])
    assert cond["predictor"] == "conditioned" and cond["explainers"] == {"all": one}
    probs = _probs(tmp_path / "cond_probs.jsonl")
    item = items[0]
    e, n, c = _direct(corpus_lm, one, item, persona="A2")  # Ann2 is prompted as A2
    np.testing.assert_allclose(probs[(item.id, "Ann2")], [c, e, n], atol=1e-5)
    assert probs[(item.id, "Ann1")] != probs[(item.id, "Ann2")]


def test_explainer_predictor_errors_are_one_line_and_write_nothing(corpus_lm, explainers, tmp_path, capsys):
    from conftest import load_script

    cli = load_script("eval/lewidi.py")
    leaky_a1 = explainers["leaky"].format(annotator="A1")
    out = tmp_path / "p.jsonl"
    base = ["predict", "--dataset", "ven", "--split", explainers["ven_test_leaky"], "--decision_split",
            explainers["ven_dev"], "--output", str(out)]
    model = ["--model", str(corpus_lm)]
    for argv, expected in (
        (base + model + ["--explainers", explainers["leaky"]],
         (f"error: {leaky_a1}/run_manifest.json: field 'training_data.item_ids': adapter explainer A1 ({leaky_a1}) "
          f"trained on {explainers['n_leaked']} of these 7 items")),
        (base + model + ["--explainers", f"{tmp_path}/none/{{annotator}}"],
         f"error: {tmp_path}/none/A1: adapter folder not found"),
        (base + model + ["--explainers", f"{tmp_path}/{{seed}}/{{annotator}}"], "error: field 'explainers': bad template"),
        (base + model + ["--baseline", "random"], "error: field 'baseline': --baseline and --model"),
        (base + ["--explainers", explainers["template"]], "error: field 'explainers': --explainers are adapters"),
        (base + model + ["--decision", "1.5"], "error: field 'decision': expected dev or a threshold"),
        (["predict", "--dataset", "ven", "--split", explainers["ven_dev"], "--decision_split", str(_clear(
            VEN_TEST, tmp_path / "clear.json")), "--output", str(out)] + model, "error: " + str(tmp_path / "clear.json")),
    ):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and err.startswith(expected) and len(err.splitlines()) == 1, err
        assert not list(tmp_path.glob("p*.jsonl"))
    assert "LeWiDi's own train split" in _last_error(cli, base + model + ["--explainers", explainers["leaky"]], capsys)


def _last_error(cli, argv, capsys) -> str:
    with pytest.raises(SystemExit):
        cli.main(argv)
    return capsys.readouterr().err
