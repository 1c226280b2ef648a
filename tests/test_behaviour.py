"""Pattern analysis on hand-made responses: writers with a signature are found, shuffled names are not."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import call_script

from capo.evaluate.behaviour.patterns import (
    Response,
    accuracy_interval,
    group_predictions,
    pattern_table,
    shuffle_within_items,
    strip_inputs,
    subtract_item_means,
)

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
    _, single_pred = group_predictions(log_proba, ["A1"] * 3, ["x", "y", "z"], 1, np.random.default_rng(0), ["A1", "A2"])
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
    result = call_script("eval/patterns.py", "--dataset", "varierr", "--ks", "0", "--output", out)
    assert result.returncode == 2 and "--ks" in result.stderr and not out.exists()


def test_cli_unknown_dataset_is_one_line(tmp_path):
    out = tmp_path / "p.json"
    result = call_script("eval/patterns.py", "--dataset", str(tmp_path / "nope.jsonl"), "--output", out)
    assert result.returncode == 2 and result.stderr.startswith("error:") and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


# --- judges --------------------------------------------------------------------------------------------------------
from capo.data.schema import NLI
from capo.errors import DataError
from capo.evaluate.behaviour.imitation import (
    generated_responses,
    imitation_report,
    source_report,
    style_stats,
)
from capo.evaluate.behaviour.judges import (
    LLMJudge,
    TrainedJudge,
    confusion_plot,
    judge_prompt,
    judge_report,
    pick_examples,
)


def _split(rows, n_train_items=80):
    train = [r for r in rows if int(r.item_id[4:]) < n_train_items]
    test = [r for r in rows if int(r.item_id[4:]) >= n_train_items]
    return train, test


def test_trained_judge_attributes_held_out_responses_and_refuses_training_items(tmp_path):
    train, test = _split(_rows(160))
    judge = TrainedJudge("char", with_label=True).fit(train)
    report = judge_report(judge.log_proba(test), [r.annotator for r in test])
    assert report["accuracy"] > 0.35 and report["chance"] == 0.25
    assert np.asarray(report["confusion"]).sum() == len(test)
    assert set(report["per_annotator"]) == set(MARKERS)
    with pytest.raises(DataError, match="trained on"):
        judge.log_proba(train[:3])
    confusion_plot(report, tmp_path / "cm.png")
    assert (tmp_path / "cm.png").read_bytes()[:4] == b"\x89PNG"


def test_llm_judge_never_shows_the_evaluated_item_and_undoes_letter_rotation(monkeypatch):
    from capo.evaluate.behaviour import judges

    train, test = _split(_rows(40), 30)
    example_items: list[tuple[str, set[str]]] = []
    real_prompt = judges.judge_prompt

    def spy(response, examples, order):
        example_items.append((response.item_id, {e.item_id for rows in examples.values() for e in rows}))
        return real_prompt(response, examples, order)

    monkeypatch.setattr(judges, "judge_prompt", spy)
    shown: list[str] = []

    def score(prompts, letters):
        # A "model" that reads the response's marker and answers the letter under which that marker's writer sits.
        shown.extend(prompts)
        out = []
        for prompt in prompts:
            body, response = prompt.rsplit("Which annotator wrote this response?", 1)
            logits = np.zeros(len(letters))
            for i, letter in enumerate(letters):
                section = body.split(f"Annotator {letter}:")[1].split("Annotator ")[0]
                writer = next(n for n, m in MARKERS.items() if m in section) if any(m in section for m in MARKERS.values()) else None
                if writer and MARKERS[writer] in response:
                    logits[i] = 5.0
            out.append(logits)
        return np.array(out)

    # Examples that always carry the marker, so the fake model can tell the sections apart.
    history = [r for r in train + test if MARKERS[r.annotator] in r.explanation]  # evaluated items included
    judge = LLMJudge(score, lambda text: text, history, per_annotator=2)
    marked = [r for r in test if MARKERS[r.annotator] in r.explanation][:8]
    log_proba = judge.log_proba(marked)
    assert np.allclose(np.exp(log_proba).sum(axis=1), 1)
    assert [judge.classes[i] for i in log_proba.argmax(axis=1)] == [r.annotator for r in marked]
    assert len(shown) == 4 * len(marked)  # every cyclic letter assignment once
    assert len(example_items) == len(shown)
    assert all(item not in used for item, used in example_items)  # no example from the evaluated item


def test_llm_judge_judges_a_response_once_whatever_its_batch_and_resumes_from_its_cache(tmp_path):
    """A response's examples follow from its content, so its judgement does not depend on its batch or position;
    it is computed once per judge and, with a cache file, once per settings across runs."""
    train, test = _split(_rows(40), 30)
    prompts: list[str] = []

    def score(batch, letters):  # a deterministic "model": logits from the prompt's text
        prompts.extend(batch)
        return np.array([[(hash(p) >> (8 * i)) % 7 for i in range(len(letters))] for p in batch], dtype=float)

    cache = tmp_path / "judgements.json"
    judge = LLMJudge(score, lambda text: text, train, per_annotator=2, cache=cache, settings={"model": "m"})
    together = judge.log_proba(test[:6])
    assert len(prompts) == 4 * 6
    fresh = LLMJudge(score, lambda text: text, train, per_annotator=2)  # no cache: judges again, in another order
    assert np.array_equal(fresh.log_proba(test[5::-1])[::-1], together) and len(prompts) == 8 * 6
    again = judge.log_proba([test[3], test[0], test[3]])
    assert np.array_equal(again, together[[3, 0, 3]]) and len(prompts) == 8 * 6  # memoised
    resumed = LLMJudge(score, lambda text: text, train, per_annotator=2, cache=cache, settings={"model": "m"})
    assert np.array_equal(resumed.log_proba(test[:6]), together) and len(prompts) == 8 * 6  # read back
    resumed.log_proba(test[:7])
    assert len(prompts) == 8 * 6 + 4  # only the new response
    other = LLMJudge(score, lambda text: text, train, per_annotator=2, cache=cache, settings={"model": "other"})
    other.log_proba(test[:1])
    assert len(prompts) == 8 * 6 + 8  # another model's cache is not used


def test_judge_prompt_refuses_the_evaluated_item_among_examples():
    rows = _rows(4)
    examples = pick_examples(rows, 1, seed=0)
    with pytest.raises(DataError, match="among the judge's examples"):
        judge_prompt(examples["A1"][0], examples, list(MARKERS))


def test_imitation_report_recognises_a_faithful_imitator_more_as_groups_grow():
    train, test = _split(_rows(200), 100)
    judge = TrainedJudge("char", with_label=False).fit(train)
    rng = np.random.default_rng(5)
    # An "explainer" for A3 that uses A3's habit as often as A3 does, on the held-out items.
    items = sorted({r.item_id for r in test})
    generated = [Response(i, "A3", "neutral", f"{'seemingly' if rng.random() < 0.35 else 'the'} statement is about x",
                          ("p", "h")) for i in items]
    report = imitation_report("A3", generated, test, judge, NLI, ks=[1, 8], embeddings=False)
    by_k = {row["k"]: row["recognised"] for row in report["attribution"]}
    assert by_k[8] > by_k[1] and by_k[8] > 0.7
    assert report["label_js_target"] == pytest.approx(0.0)
    assert report["item_label_agreement"] == 1.0
    assert report["style"]["generated"]["words"] == pytest.approx(5.0)  # "<marker> statement is about x"


def test_imitation_report_leaves_out_annotators_without_real_responses(monkeypatch):
    from capo.evaluate.behaviour import imitation

    # Stand-in sentence embedding: the counts of a few words (MiniLM itself is tested in the variability tests).
    vocab = ("seemingly", "the", "statement", "x")
    monkeypatch.setattr(imitation, "embed", lambda texts: np.array(
        [[t.split().count(w) for w in vocab] for t in texts], dtype=float).reshape(len(texts), len(vocab)))
    _, test = _split(_rows(200), 100)
    real = [r for r in test if r.annotator != "A2"]  # A2 gave no response on these items
    judge = TrainedJudge("char", with_label=False).fit(_split(_rows(200), 100)[0])
    generated = [Response(r.item_id, "A3", r.label, r.explanation, r.inputs) for r in real if r.annotator == "A3"]
    report = imitation_report("A3", generated, real, judge, NLI, ks=[1], embeddings=True)
    for key in ("label_js", "centroid_cosine"):
        assert set(report[key]) == {"A1", "A3", "A4"}, key
    assert set(report["style"]) == {"generated", "A1", "A3", "A4"}
    assert report["nearest_annotator"] == "A3" and report["centroid_cosine"]["A3"] == pytest.approx(1.0)
    assert all(np.isfinite(list(report["label_js"].values())))

    # A generated source whose target has nothing real on these items gets a row that says so.
    items = {r.item_id: type("I", (), {"id": r.item_id, "inputs": {"premise": r.inputs[0], "hypothesis": "h"}})()
             for r in real}
    records = [{"id": r.item_id, "target": target, "label": r.label, "explanation": r.explanation}
               for target in ("A2", "A3") for r in real if r.annotator == "A3"]
    per, _ = source_report(records, items, NLI, judge, real, ks=[1], embeddings=False)
    assert per["A2"]["note"] == "no real held-out response from A2 on these items" and "label_js" not in per["A2"]
    assert per["A2"]["generated"] == per["A3"]["generated"] > 0 and per["A3"]["label_js_target"] == pytest.approx(0)


def test_imitation_compares_a_source_with_the_humans_on_the_items_it_covers_only():
    from capo.evaluate.behaviour.imitation import judge_sources

    train, test = _split(_rows(200), 100)
    judge = TrainedJudge("char", with_label=False).fit(train)
    # A3 says neutral on items 100-149 and contradiction on 150-199; the source covers items 100-139 only, where it
    # copies A3 exactly: on those items it *is* A3, so its ceiling, label JS and agreement must say so.
    real = [Response(r.item_id, r.annotator, "contradiction" if r.annotator == "A3" and int(r.item_id[4:]) >= 150
                     else r.label, r.explanation, r.inputs) for r in test]
    covered = {f"item{i}" for i in range(100, 140)}
    copy = [r for r in real if r.annotator == "A3" and r.item_id in covered]
    report = imitation_report("A3", copy, real, judge, NLI, ks=[1, 8], embeddings=False)
    assert report["basis"]["generated"] == report["basis"]["human_ceiling"] == {"items": 40, "responses": 40}
    assert all(b == {"items": 40, "responses": 40} for b in report["basis"]["real"].values())
    assert report["human_ceiling"] == report["attribution"]  # same responses, same items, same groups
    assert report["human_ceiling"][0]["groups"] == 40  # not the 100 held-out items
    assert report["label_js_target"] == 0.0 and report["item_label_agreement"] == 1.0
    assert report["style"]["A3"] == report["style"]["generated"]

    # The same through the library's judging loop that eval/imitation.py and the pipeline call: the judge's sanity
    # check still covers every held-out response, the source's numbers only its items.
    items = {r.item_id: type("I", (), {"id": r.item_id, "inputs": {"premise": r.inputs[0], "hypothesis": r.inputs[1]}})()
             for r in real}
    records = [{"id": r.item_id, "target": "A3", "label": r.label, "explanation": r.explanation} for r in copy]
    judged = judge_sources(judge, real, items, NLI, {"copy": records}, ks=[1, 8], embeddings=False)
    assert judged["human_heldout"]["n"] == len(real) and judged["heldout_items"] == 100
    row = judged["sources"]["copy"]["A3"]
    assert row["basis"]["generated"]["items"] == row["basis"]["human_ceiling"]["items"] == 40
    assert row["human_ceiling"] == row["attribution"] and row["label_js_target"] == 0.0


def test_generated_responses_count_unparsed_and_locate_unknown_items():
    items = {"x": type("I", (), {"id": "x", "inputs": {"premise": "p", "hypothesis": "h"}})()}
    rows, unparsed = generated_responses(
        [{"id": "x", "annotator": "A1", "label": "Neutral", "explanation": "e", "parsed": True},
         {"id": "x", "annotator": "A1", "label": None, "explanation": "", "parsed": False}], items, NLI)
    assert [r.label for r in rows] == ["neutral"] and unparsed == 1
    with pytest.raises(DataError, match="item y"):
        generated_responses([{"id": "y", "label": "neutral", "explanation": "e"}], items, NLI)


def test_style_stats_counts_hedges_negations_and_copied_words():
    rows = [Response("i", "A1", "neutral", "It might not rain", ("rain today",)),
            Response("j", "A1", "neutral", "Cats sleep", ("dogs",))]
    stats = style_stats(rows)
    assert stats == {"words": 3.0, "hedging": 0.5, "negation": 0.5, "input_overlap": pytest.approx((1 / 4) / 2)}


# --- variability ---------------------------------------------------------------------------------------------------
from capo.evaluate.behaviour.variability import input_overlap, pairwise_overlap, variability, words


def test_ngram_overlaps_worked_by_hand():
    a, b = words("the cat sat"), words("the cat ran")
    # unigrams {the, cat, sat} vs {the, cat, ran}: 2 shared of 4 -> 0.5; bigrams {the cat, cat sat} vs
    # {the cat, cat ran}: 1 of 3; trigrams: 0 of 2.
    assert pairwise_overlap([a, b], 1) == pytest.approx(0.5)
    assert pairwise_overlap([a, b], 2) == pytest.approx(1 / 3)
    assert pairwise_overlap([a, b], 3) == 0.0
    assert np.isnan(pairwise_overlap([a], 1))
    # "the cat sat" against the input "a cat sat down": unigrams cat, sat of 3 -> 2/3; bigram "cat sat" of 2 -> 1/2.
    assert input_overlap(a, words("a cat sat down"), 1) == pytest.approx(2 / 3)
    assert input_overlap(a, words("a cat sat down"), 2) == pytest.approx(0.5)


def test_variability_of_identical_explanations_is_maximal_and_tags_are_used_when_present():
    sets = {"i": ["the dog runs", "the dog runs"], "j": ["a cat", "a cat", "a cat"]}
    out = variability(sets, {"i": "dog", "j": "cat"}, embeddings=False)
    assert out["lex1_within"] == 1.0 and out["lex2_within"] == 1.0
    assert out["lex1_input"] == pytest.approx((1 / 3 * 2 + 1 / 2 * 3) / 5)
    from capo.evaluate.behaviour.variability import pos_tagger

    assert ("pos1_within" in out) == (pos_tagger() is not None)
    with pytest.raises(DataError, match="item k"):
        variability({"k": ["x"]}, {"i": "y"})


def test_variability_cli_measures_the_humans_on_the_generated_items_and_writes_what_it_measured(tmp_path):
    """--items generated: the human set on the items the generated file holds (one whose only record did not parse
    too), of --annotators only; --human_output writes that set, and --human reads it back to the same row."""
    import json

    from conftest import write_jsonl

    from capo.data.registry import load_items

    items = load_items("varierr")[:3]
    rows = [{"id": item.id, "annotator": "A1", "label": a.label, "explanation": a.explanation, "parsed": True}
            for item in items[:2] for a in item.annotations if a.annotator == "A1"]
    rows.append({"id": items[2].id, "annotator": "A1", "label": None, "explanation": None, "parsed": False})
    generated = write_jsonl(tmp_path / "generations.jsonl", rows)
    out, human = tmp_path / "v.json", tmp_path / "human.jsonl"
    result = call_script("eval/variability.py", "--human", "varierr", "--items", "generated", "--annotators", "A1",
                        "A2", "--generated", f"copy={generated}", "--no_embeddings", "--output", out,
                        "--human_output", human)
    assert result.returncode == 0, result.stderr
    table = json.loads(out.read_text())["table"]
    kept = [json.loads(line) for line in human.read_text().splitlines()]
    assert [k["id"] for k in kept] == [item.id for item in items]
    assert {a["annotator"] for k in kept for a in k["annotations"]} <= {"A1", "A2"}
    assert table["human"]["items"] == 3 and table["copy"]["items"] == 2 and "| copy | 2 |" in result.stdout
    again = call_script("eval/variability.py", "--human", human, "--no_embeddings", "--output", tmp_path / "w.json")
    assert again.returncode == 0 and json.loads((tmp_path / "w.json").read_text())["table"]["human"] == table["human"]
    for argv, field in ((["--generated", f"human={generated}"], "--generated"),
                        (["--model_explanations", f"x={generated}", "--generated", f"x={generated}"], "--generated"),
                        (["--items", "generated"], "items")):
        refused = call_script("eval/variability.py", *argv, "--output", tmp_path / "x.json")
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and f"field '{field}'" in refused.stderr
    assert not (tmp_path / "x.json").exists()


# --- the imitation script on real VariErr data ---------------------------------------------------------------------
def test_imitation_cli_a_copy_of_the_target_matches_the_human_ceiling(tmp_path):
    import json

    from capo.evaluate.behaviour.judges import histories_and_heldout

    history, heldout, _ = histories_and_heldout("nli")
    assert not {r.item_id for r in history} & {r.item_id for r in heldout}
    generated = tmp_path / "generations.jsonl"
    generated.write_text("".join(json.dumps({"id": r.item_id, "annotator": "A2", "label": r.label,
                                             "explanation": r.explanation, "parsed": True}) + "\n"
                                 for r in heldout if r.annotator == "A2"))
    out = tmp_path / "report.json"
    result = call_script("eval/imitation.py", "--task", "nli", "--generated", f"copy={generated}", "--ks", "1", "4",
                        "--no_embeddings", "--output", out, "--plots", tmp_path / "plots")
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    a2 = report["sources"]["copy"]["A2"]
    assert a2["attribution"] == a2["human_ceiling"]
    assert a2["label_js_target"] == 0.0 and a2["item_label_agreement"] == 1.0
    assert report["human_heldout"]["accuracy"] > 0.5  # the sanity check: real responses well above chance (0.25)
    # every parsed targeted response is judged once more for the source's accuracy and confusion matrix (the same
    # keys the pipeline's imitation stage writes)
    copy = report["confusion"]["copy"]
    assert copy["n"] == a2["generated"] == np.asarray(copy["confusion"]).sum()
    assert copy["per_annotator"]["A2"] == pytest.approx(a2["attribution"][0]["recognised"], abs=1e-3)
    assert copy["accuracy"] == pytest.approx(copy["per_annotator"]["A2"], abs=5e-3)  # the accuracy is rounded
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["confusion_nli_copy.png", "confusion_nli_human.png"]


def test_read_generations_keeps_what_generation_writes_and_locates_what_it_cannot(tmp_path):
    from conftest import write_jsonl

    from capo.evaluate.behaviour.imitation import read_generations

    items = {"x": object(), "y": object()}  # only membership is checked
    rows = [{"id": "x", "annotator": "base", "label": "neutral", "explanation": "e"},  # a source without a target
            {"id": "x", "annotator": "A1", "label": None, "explanation": None, "parsed": False},  # unparsed
            {"id": "y", "annotator": "A2", "label": "neutral", "explanation": "one"},
            {"id": "y", "annotator": "A2", "label": "entailment", "explanation": "two"},  # real annotators do this
            {"id": "y", "annotator": "sft", "target": "A3", "label": "neutral", "explanation": "e"}]
    assert read_generations(write_jsonl(tmp_path / "g.jsonl", rows), items) == rows
    bad = write_jsonl(tmp_path / "g.jsonl", [*rows, dict(rows[0], target="A7")])
    with pytest.raises(DataError, match=r"g\.jsonl:6: item x: field 'target': unknown annotator 'A7'"):
        read_generations(bad, items)
    with pytest.raises(DataError, match=r"g\.jsonl: no generation records in file"):
        read_generations(write_jsonl(tmp_path / "g.jsonl", []), items)


def test_imitation_cli_bad_generated_spec_writes_nothing(tmp_path):
    out = tmp_path / "report.json"
    result = call_script("eval/imitation.py", "--generated", "no-equals-sign", "--output", out)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--generated" in result.stderr
    assert not out.exists()


def test_imitation_cli_llm_judge_runs_through_the_shared_scorer(tmp_path, corpus_lm):
    import json

    out = tmp_path / "report.json"
    result = call_script("eval/imitation.py", "--task", "nli", "--judge", "llm", "--judge_model", corpus_lm,
                        "--judge_examples", "1", "--limit", "6", "--output", out, "--plots", tmp_path / "plots")
    assert result.returncode == 0, result.stderr
    human = json.loads(out.read_text())["human_heldout"]
    assert human["n"] == 6 and 0.0 <= human["accuracy"] <= 1.0
    assert np.asarray(human["confusion"]).sum() == 6
    assert (tmp_path / "plots" / "confusion_nli_llm_human.png").exists()


def test_imitation_cli_llm_judge_without_a_model_is_one_line(tmp_path):
    result = call_script("eval/imitation.py", "--judge", "llm", "--output", tmp_path / "r.json")
    assert result.returncode == 2 and "--judge_model" in result.stderr and result.stderr.count("\n") == 1
