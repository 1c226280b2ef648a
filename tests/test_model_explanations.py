"""Model explanations: the list parser, first/longest selection with repeats, and reproduction of the released
Llama3 / GPT-4o / Mixtral files.

Only the released *selected* lists exist (not the raw generated lists), so the check rebuilds what the raw lists
must have been and selects from that: per item and label, the generation-order prefix is the longest of the
label's explanations in the three `first` files (they must agree on it), and the pool for `longest` adds every
further explanation seen in the `longest` files. Selecting from those pools with the item's label multisets must
give every released file back exactly: label positions, order, ranking by length, ties, and repeats.
"""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from capo.data.formats.common import MODEL_EXPLANATIONS_DIR
from capo.data.formats.mjd_files import load_model_explanations, load_nli341
from capo.data.schema import NLI
from capo.errors import DataError
from capo.generate.model_explanations import (
    explanation_prompt,
    explanation_sets,
    label_free,
    label_multiset,
    parse_explanation_list,
    rank,
    released_row,
    select,
)

KINDS = ("Label-Free", "VariErr-Label-Guided", "MNLI-Label-Guided")


def test_parser_numbered_bulleted_and_wrapped_lists():
    text = (
        "Here are all possible explanations:\n\n"
        "1. The context says it rained,\n   so the street was wet.\n"
        "2) **Scope:** the statement is about a different city.\n\n"
        "(3) Nothing rules it out.\n"
        "I hope this helps!"
    )
    assert parse_explanation_list(text) == [
        "The context says it rained, so the street was wet.",
        "Scope: the statement is about a different city.",
        "Nothing rules it out. I hope this helps!",  # no blank line: a continuation, as written
    ]
    assert parse_explanation_list("- first\n* second\n• third\n\nIn summary, many reasons.") == ["first", "second", "third"]
    assert parse_explanation_list("10. tenth\n11. eleventh") == ["tenth", "eleventh"]
    assert parse_explanation_list("Just one plain explanation.") == ["Just one plain explanation."]
    assert parse_explanation_list("Here are the explanations:") == []
    assert parse_explanation_list("") == []
    # Numbers inside a sentence are not markers.
    assert parse_explanation_list("1. In 1982 he won.\n2. He won 3. times") == ["In 1982 he won.", "He won 3. times"]


def test_selection_ranks_pads_with_the_top_one_and_keeps_positions():
    pool = {"entailment": ["bb", "a", "cccc", "dd"], "neutral": ["n1", "n22"], "contradiction": ["c"]}
    assert rank(pool["entailment"], "longest") == ["cccc", "bb", "dd", "a"]  # tie bb/dd in generation order
    labels = ["neutral", "entailment", "neutral", "neutral", "neutral"]
    assert select(pool, labels, "first") == [("n1", "neutral"), ("bb", "entailment"), ("n22", "neutral"),
                                             ("n1", "neutral"), ("n1", "neutral")]  # a b a a, as released
    assert select(pool, labels, "longest")[::2] == [("n22", "neutral"), ("n1", "neutral"), ("n22", "neutral")]
    assert label_free(pool, "first") == [("bb", "entailment"), ("n1", "neutral"), ("c", "contradiction")]
    with pytest.raises(DataError, match="no explanation for label 'contradiction'"):
        select({"entailment": ["x"]}, ["e", "c"], "first", item_id="q1")
    with pytest.raises(DataError, match="unknown selection 'shortest'"):
        rank(["x"], "shortest")


def _released(model: str) -> dict[str, list[list[tuple[str, str]]]]:
    """Each released file as rows of (text, label), text exactly as stored (GPT-4o's trailing newlines kept:
    its `longest` files rank by the stored length)."""
    paths = {p.name.lower(): p for p in (MODEL_EXPLANATIONS_DIR / model).glob("*.json")}
    out = {}
    for kind in KINDS:
        for strategy in ("first", "longest"):
            rows = []
            for line in paths[f"{kind}-{strategy}.json".lower()].read_text().splitlines():
                row = json.loads(line)
                key = next(k for k in row if k.startswith("machine_"))
                rows.append([(text, NLI.normalise(letter)) for text, letter in row[key]])
            out[f"{kind}-{strategy}"] = rows
    return out


def _by_label(pairs):
    grouped = defaultdict(list)
    for text, label in pairs:
        grouped[label].append(text)
    return grouped


@pytest.mark.parametrize("model", ["Llama3", "GPT4o", "Mixtral"])
def test_selection_reproduces_the_released_files(model):
    items = load_nli341()
    released = _released(model)
    repeats = 0
    for i, item in enumerate(items):
        prefix: dict[str, list[str]] = {}
        for kind in KINDS:
            for label, texts in _by_label(released[f"{kind}-first"][i]).items():
                distinct = list(dict.fromkeys(texts))
                repeats += len(distinct) < len(texts)
                known = prefix.get(label, [])
                shorter, longer = sorted((known, distinct), key=len)
                assert longer[: len(shorter)] == shorter, f"{model} item {item.id}: first files disagree on order"
                prefix[label] = longer
        pool_longest = {label: list(texts) for label, texts in prefix.items()}
        for kind in KINDS:
            for label, texts in _by_label(released[f"{kind}-longest"][i]).items():
                pool_longest[label] += [t for t in dict.fromkeys(texts) if t not in pool_longest[label]]
        for strategy, pool in (("first", prefix), ("longest", pool_longest)):
            for kind, source in (("VariErr-Label-Guided", "varierr"), ("MNLI-Label-Guided", "mnli")):
                expected = released[f"{kind}-{strategy}"][i]
                assert select(pool, label_multiset(item, source), strategy, item.id) == expected, (model, item.id, kind)
            expected = released[f"Label-Free-{strategy}"][i]  # label order differs by model: take the file's
            assert label_free(pool, strategy, [label for _, label in expected], item.id) == expected
    assert repeats > 0, "the files hold repeats, so padding must have been exercised"


def test_sets_written_in_released_format_load_back(tmp_path):
    item = load_nli341()[0]
    pool = {"entailment": ["e one", "e two long"], "neutral": ["n one"], "contradiction": ["c one", "c two"]}
    sets = explanation_sets(item, pool)
    assert set(sets) == {f"{kind}-{s}" for kind in KINDS for s in ("first", "longest")}
    assert [label for _, label in sets["VariErr-Label-Guided-first"]] == [a.label for a in item.annotations]
    assert len(sets["MNLI-Label-Guided-longest"]) == 5
    bare = type(item)(id="x", task="nli", inputs=item.inputs)  # no annotations, no MNLI counts: label-free only
    assert set(explanation_sets(bare, pool, kinds=("label-free",))) == {"Label-Free-first", "Label-Free-longest"}
    with pytest.raises(DataError, match="item x: field 'annotations'"):
        explanation_sets(bare, pool)
    path = tmp_path / "VariErr-Label-Guided-first.json"
    path.write_text(json.dumps(released_row(item, sets["VariErr-Label-Guided-first"], "varierr")) + "\n")
    assert load_model_explanations(path) == {item.id: sets["VariErr-Label-Guided-first"]}


def test_prompt_and_multiset_errors():
    item = load_nli341()[0]
    assert "undetermined" in explanation_prompt(item, "n") and item.inputs["hypothesis"] in explanation_prompt(item, "e")
    assert "is false given" in explanation_prompt(item, "contradiction")
    bare = type(item)(id="x", task="nli", inputs=item.inputs)
    with pytest.raises(DataError, match="item x: field 'mnli labels'"):
        label_multiset(bare, "mnli")
    with pytest.raises(DataError, match="unknown label multiset 'chaos'"):
        label_multiset(item, "chaos")


@pytest.mark.slow
def test_recipe_writes_loadable_sets_from_generated_lists(corpus_lm, tmp_path):
    from capo.generate.model_explanations import ModelExplanationArguments, run_model_explanations

    out = tmp_path / "mx"
    summary = run_model_explanations(ModelExplanationArguments(
        model=str(corpus_lm), dataset="nli341", output_dir=str(out), limit=2, dtype="float32", max_new_tokens=24,
        shard_size=4))
    records = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    items = load_nli341()[:2]
    assert [(r["id"], r["label"]) for r in records] == [(i.id, lab) for i in items for lab in NLI.labels]
    for record in records:
        assert record["explanations"] == parse_explanation_list(record["raw"])
    assert len(summary["sets"]) == 6
    complete = [i for i in items if i.id not in summary["items_left_out"]]
    assert complete, "the tiny LM gave no parsable list at all: nothing to check"
    pools = {i.id: {r["label"]: r["explanations"] for r in records if r["id"] == i.id} for i in complete}
    for item in complete:
        for name, pairs in explanation_sets(item, pools[item.id]).items():
            loaded = load_model_explanations(out / f"{name}.json")
            assert loaded[item.id] == [(text.strip(), label) for text, label in pairs]
