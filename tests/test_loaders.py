import json

import pytest

from capo.data.formats.common import CHAOS_DIR, LEWIDI_DIR, MODEL_EXPLANATIONS_DIR
from capo.data.formats.jsonl import item_to_json, load_items_jsonl
from capo.data.formats.lewidi import load_lewidi, load_lewidi_annotators_meta
from capo.data.formats.mjd_files import load_chaosnli, load_model_explanations, load_nli341
from capo.data.formats.varierr import load_varierr
from capo.data.registry import load_items
from capo.data.schema import ANNOTATORS, NLI


@pytest.fixture(scope="module")
def varierr():
    return load_varierr()


def test_varierr_counts_and_annotator_mapping(varierr):
    assert len(varierr) == 500
    assert sum(len(i.annotations) for i in varierr) == 1933  # the paper's 1,933 explanations
    assert sum(len(a.votes) for i in varierr for a in i.annotations) == 7574
    first = next(i for i in varierr if i.id == "23751e")
    # VariErr annotator 2 wrote the entailment explanation -> A3; annotator 0 the contradiction one -> A1.
    assert [(a.annotator, a.label) for a in first.annotations] == [("A3", "entailment"), ("A1", "contradiction")]
    assert first.annotations[0].votes == {"A1": False, "A2": True, "A3": True, "A4": False}
    assert first.distributions["chaosnli"] == pytest.approx([0.85, 0.13, 0.02])
    assert first.meta["idk"] == ["A2", "A4"]


def test_varierr_zero_count_chaos_labels_are_filled(varierr):
    # 63 items omit ChaosNLI labels with 0 votes; every distribution still has three entries summing to 1.
    assert all(len(i.distributions["chaosnli"]) == 3 for i in varierr)
    assert sum(0.0 in i.distributions["chaosnli"] for i in varierr) == 63


def test_nli341_joins_varierr_ids_and_attributes_comments(varierr):
    items = load_nli341()
    assert len(items) == 341 and len({i.id for i in items}) == 341
    by_id = {i.id: i for i in varierr}
    for item in items:
        assert item.id in by_id
        assert item.label_counts() == [round(4 * p) for p in item.distributions["varierr"]]
        assert sum(item.meta["mnli_counts"]) == 5
        assert all(a.annotator in ANNOTATORS for a in item.annotations)
        # Every attributed comment is the same annotator's VariErr reason for that label.
        varierr_pairs = {(a.annotator, a.label, " ".join(a.explanation.split())) for a in by_id[item.id].annotations}
        assert all((a.annotator, a.label, " ".join(a.explanation.split())) in varierr_pairs for a in item.annotations)


def test_chaosnli_dev_test_are_disjoint_from_the_341_items():
    dev, test = load_chaosnli(CHAOS_DIR / "dev.json"), load_chaosnli(CHAOS_DIR / "test.json")
    assert len(dev) == len(test) == 629
    ids_341 = {i.id for i in load_nli341()}
    assert not ({i.id for i in dev} & {i.id for i in test}) and not ({i.id for i in dev} & ids_341)
    # 73 dev and 86 test items are VariErr items (VariErr ids), the rest get content ids.
    assert sum(not i.id.startswith("t") for i in dev) == 73
    assert sum(not i.id.startswith("t") for i in test) == 86


def test_lewidi_varierrnli_alignment_matches_varierr(varierr):
    items = load_lewidi(LEWIDI_DIR / "VariErrNLI" / "VariErrNLI_dev.json")
    assert len(items) == 50 and sum(len(i.annotations) for i in items) == 187
    by_text = {(i.inputs["premise"], i.inputs["hypothesis"]): i for i in varierr}
    for item in items:
        source = by_text[(item.inputs["premise"], item.inputs["hypothesis"])]
        ours = sorted((a.annotator, a.label, a.explanation) for a in item.annotations)
        theirs = sorted((a.annotator, a.label, a.explanation.strip()) for a in source.annotations)
        assert ours == theirs  # LeWiDi keeps round-1 labels, self-corrected ones included
        assert item.meta["split"] == "dev" and not item.validated
        assert item.id == source.id and source.id.startswith(item.meta["lewidi_id"])  # joins with VariErr files


def test_lewidi_paraphrase():
    items = load_items("lewidi-par-train")
    assert len(items) == 400 and all(i.annotators() == list(ANNOTATORS) for i in items)
    first = items[0]
    assert first.id == "218948" and first.task == "paraphrase"
    assert [a.label for a in first.annotations] == ["-3", "-4", "0", "-4"]
    assert first.distributions["lewidi_soft"][1] == pytest.approx(0.5)
    mean_a3 = sum(int(a.label) for i in items for a in i.by_annotator("A3")) / 400
    assert mean_a3 == pytest.approx(3.23, abs=0.01)  # the strong annotator bias documented upstream


def test_annotators_meta_with_trailing_commas():
    meta = load_lewidi_annotators_meta(LEWIDI_DIR / "VariErrNLI" / "VariErrNLI_annotators_meta.json")
    assert list(meta) == list(ANNOTATORS)
    assert meta["A2"]["Age"] == "33" and meta["A1"]["Nationality"] == "Chinese"


@pytest.mark.parametrize(
    "model,name,per_item",
    [("Llama3", "Label-Free-first", 3), ("GPT4o", "VariErr-Label-Guided-longest", 4), ("Mixtral", "MNLI-Label-Guided-first", 5)],
)
def test_model_explanation_files(model, name, per_item):
    expl = load_model_explanations(MODEL_EXPLANATIONS_DIR / model / f"{name}.json")
    assert set(expl) == {i.id for i in load_nli341()}
    assert all(len(pairs) == per_item for pairs in expl.values())
    assert all(text == text.strip() and label in NLI.labels for pairs in expl.values() for text, label in pairs)


def test_bring_your_own_jsonl_round_trip(tmp_path, varierr):
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(item_to_json(i)) + "\n" for i in varierr[:20]))
    loaded = load_items_jsonl(path)
    assert [i.id for i in loaded] == [i.id for i in varierr[:20]]
    for a, b in zip(loaded, varierr[:20]):
        assert [(x.annotator, x.label, x.explanation, x.votes) for x in a.annotations] == [
            (x.annotator, x.label, x.explanation, x.votes) for x in b.annotations
        ]
        assert a.validated and a.distributions["chaosnli"] == pytest.approx(b.distributions["chaosnli"])


@pytest.mark.parametrize("bad_id,message", [(True, "expected str or int, got bool"), (False, "expected str or int, got bool"),
                                            (1.5, "expected str or int, got float"), (" ", "empty item id")])
def test_bring_your_own_item_id_must_be_a_string_or_integer(tmp_path, varierr, bad_id, message):
    """JSON `true` is an int to Python: it must not quietly become the item "True"."""
    from capo.errors import DataError

    good = item_to_json(varierr[0])
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(dict(good, id=bad_id)) + "\n")
    with pytest.raises(DataError, match=rf"mine.jsonl:2: field 'id': {message}$"):
        load_items_jsonl(path)
    path.write_text(json.dumps(dict(good, id=7)) + "\n")
    assert [i.id for i in load_items_jsonl(path)] == ["7"]
