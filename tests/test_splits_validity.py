import pytest

from capo.data.formats.varierr import load_varierr
from capo.data.registry import load_items
from capo.data.schema import Annotation, Item
from capo.data.splits import history, predefined_split, split_items
from capo.data.validity import not_error_label, own_vote, peer_majority, predicate, unanimous
from capo.errors import DataError


@pytest.fixture(scope="module")
def varierr():
    return load_varierr()


def test_split_is_item_disjoint_complete_and_seeded(varierr):
    split = split_items(varierr, seed=3)
    train, dev, test = map(set, (split.train, split.dev, split.test))
    assert not (train & dev or train & test or dev & test)
    assert train | dev | test == {i.id for i in varierr}
    assert (len(train), len(dev), len(test)) == (400, 50, 50)
    assert split_items(list(reversed(varierr)), seed=3) == split  # independent of input order
    assert split_items(varierr, seed=4) != split


def test_history_never_contains_held_out_items(varierr):
    split = split_items(varierr, seed=0)
    rows = history(varierr, "A2", split.train)
    assert rows and all(item.id in split.train and a.annotator == "A2" for item, a in rows)
    assert {item.id for item, _ in rows}.isdisjoint(set(split.dev) | set(split.test))


def test_history_rejects_unknown_annotator(varierr):
    with pytest.raises(DataError, match="unknown annotator 'A9' \\(valid: A1, A2, A3, A4\\)"):
        history(varierr, "A9")


def test_predefined_lewidi_split():
    items = load_items("lewidi-ven-train") + load_items("lewidi-ven-dev") + load_items("lewidi-ven-test")
    # VariErr ids: unlike LeWiDi's numeric keys, they do not collide across splits.
    assert len({i.id for i in items}) == len(items) == 488
    split = predefined_split(items)
    assert (len(split.train), len(split.dev), len(split.test)) == (388, 50, 50)
    assert {i.meta["lewidi_id"] for i in split.select(items, "test")} >= {"23751", "144753", "72870", "46198"}


def _item(votes: dict, author="A1", label="neutral", error_labels=(), self_corrected=False):
    annotation = Annotation(author, label, "because", votes=votes, self_corrected=self_corrected)
    return Item("x", "nli", {"premise": "p", "hypothesis": "h"}, [annotation], error_labels=error_labels, validated=True), annotation


@pytest.mark.parametrize(
    "votes,own,majority,all_yes",
    [
        ({"A1": True, "A2": True, "A3": True, "A4": True}, True, True, True),
        ({"A1": False, "A2": True, "A3": True, "A4": False}, False, True, False),
        ({"A1": True, "A2": True, "A3": False, "A4": False}, True, False, False),  # 1 of 3 peers
        ({"A1": True, "A2": True, "A3": False}, True, False, False),  # tie among peers is not a majority
        ({"A2": True}, False, True, False),  # own vote missing
        ({}, False, False, False),
    ],
)
def test_validity_predicates(votes, own, majority, all_yes):
    item, annotation = _item(votes)
    assert own_vote(item, annotation) is own
    assert peer_majority(item, annotation) is majority
    assert unanimous(item, annotation) is all_yes


def test_error_label_and_combined_predicates():
    item, annotation = _item({"A1": True, "A2": True, "A3": True}, error_labels=("neutral",), self_corrected=True)
    assert not not_error_label(item, annotation)
    assert not predicate("peer_majority_not_self_corrected")(item, annotation)
    assert predicate("peer_majority+own_vote")(item, annotation)
    with pytest.raises(DataError, match="unknown validity predicate"):
        predicate("peer_minority")


def test_unvalidated_sources_count_every_response_as_valid():
    item = load_items("lewidi-par-dev")[0]
    assert all(p(item, a) for a in item.annotations for p in (own_vote, peer_majority, unanimous))


def test_varierr_self_corrected_pairs_fail_own_vote(varierr):
    pairs = [(i, a) for i in varierr for a in i.annotations]
    # self_corrected means the author did not validate their own pair.
    assert all(not own_vote(i, a) for i, a in pairs if a.self_corrected)
    assert all(own_vote(i, a) for i, a in pairs if not a.self_corrected)


def test_load_splits_cuts_every_data_set_as_training_does(varierr):
    from capo.data.datasets import load_splits, load_task_data

    parts = lambda split: [set(split.of(s)) for s in ("train", "dev", "test")]
    nli341 = load_splits("nli341", split_seed=2)
    assert nli341.task == "nli" and parts(nli341.split()) == parts(split_items(load_items("nli341"), seed=2))
    assert parts(load_splits("varierr", split_seed=3).split()) == parts(split_items(varierr, seed=3))
    assert load_splits("varierr").split() == load_task_data("nli").split()
    ven_test = load_splits("lewidi-ven-test")  # one LeWiDi file keeps its own split, whatever the seed
    assert not ven_test.items("train") and len(ven_test.items("test")) == 50
    ven = load_task_data("nli", "lewidi-ven")
    assert [len(ven.items(s)) for s in ("train", "dev", "test")] == [388, 50, 50]
    with pytest.raises(DataError, match="holds paraphrase items, not nli"):
        load_task_data("nli", "lewidi-par")


def test_content_hash_follows_items_and_split():
    import copy

    from capo.data.datasets import TaskData, load_task_data

    data = load_task_data("nli")
    assert data.content_sha256() == load_task_data("nli").content_sha256()
    assert data.content_sha256() != load_task_data("nli", split_seed=1).content_sha256()
    splits = copy.deepcopy(data.splits)
    splits["train"][0].annotations[0] = Annotation("A1", "neutral", "edited", {})
    assert TaskData(data.task, data.dataset, data.split_seed, splits).content_sha256() != data.content_sha256()
