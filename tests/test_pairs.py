"""SFT rows and CAPO pairs: validity (CAPO sides and SFT rows), rejected_from modes, normalised duplicates, caps,
split isolation, determinism, separate pair / few-shot generators, your own JSONL, prompt rendering and the preview."""

from __future__ import annotations

import json

import pytest
from conftest import call_script

from capo.data.datasets import load_task_data
from capo.data.formats.jsonl import item_to_json
from capo.data.prompts import parse_response, persona_line, render_inputs, user_prompt
from capo.data.schema import Annotation, Item
from capo.data.splits import split_items
from capo.errors import DataError
from capo.train.pairs import (
    capo_pairs,
    for_annotators,
    normalise_text,
    preview,
    sft_rows,
    split_prompt_completion,
)


def _vote(ok_peers: int, peers: int, author: str) -> dict[str, bool]:
    others = [a for a in ("A1", "A2", "A3", "A4") if a != author][:peers]
    return {author: True, **{voter: k < ok_peers for k, voter in enumerate(others)}}


def _item(item_id: str = "i1") -> Item:
    return Item(
        id=item_id,
        task="nli",
        inputs={"premise": f"A man sleeps ({item_id}).", "hypothesis": "A person rests."},
        annotations=[
            Annotation("A2", "entailment", "Sleeping is resting.", _vote(3, 3, "A2")),
            Annotation("A2", "neutral", "He may be restless.", _vote(2, 3, "A2")),
            Annotation("A1", "entailment", "sleeping  is RESTING", _vote(3, 3, "A1")),  # duplicate of A2's, normalised
            Annotation("A3", "entailment", "A sleeping man rests.", _vote(2, 3, "A3")),
            Annotation("A4", "contradiction", "Sleeping is not resting.", _vote(1, 3, "A4")),  # peers reject it
            Annotation("A1", "neutral", "Not sure he rests.", _vote(3, 3, "A1"), self_corrected=True),
        ],
        validated=True,
    )


def _keys(rows):
    return {(r["chosen_label"], r["rejected_annotator"], r["rejected_label"]) for r in rows}


def test_validity_and_duplicates():
    rows = capo_pairs([_item()], "A2")
    # A4's response fails the peer majority, A1's neutral was self-corrected, A1's entailment equals A2's text.
    assert _keys(rows) == {("entailment", "A3", "entailment"), ("neutral", "A3", "entailment"),
                           ("neutral", "A1", "entailment")}
    assert all(r["annotator"] == "A2" and r["id"] == "i1" for r in rows)
    loose = capo_pairs([_item()], "A2", rejected_valid="any")
    assert ("entailment", "A4", "contradiction") in _keys(loose)
    assert ("entailment", "A1", "neutral") in _keys(loose)
    assert ("entailment", "A1", "entailment") not in _keys(loose)  # identical after normalisation: always dropped
    assert normalise_text("Sleeping is resting.") == normalise_text("sleeping  is RESTING")


def test_rejected_from_modes():
    kw = {"rejected_valid": "any"}
    same = capo_pairs([_item()], "A2", rejected_from="same_label", **kw)
    different = capo_pairs([_item()], "A2", rejected_from="different_label", **kw)
    everything = capo_pairs([_item()], "A2", rejected_from="all", **kw)
    assert same and different
    assert all(r["chosen_label"] == r["rejected_label"] for r in same)
    assert all(r["chosen_label"] != r["rejected_label"] for r in different)
    assert len(same) + len(different) == len(everything)
    with pytest.raises(DataError, match="valid: all, same_label, different_label"):
        capo_pairs([_item()], "A2", rejected_from="others")


def test_unvalidated_items_count_every_response_as_valid():
    item = _item()
    item.validated = False
    assert ("entailment", "A4", "contradiction") in _keys(capo_pairs([item], "A2"))


def test_cap_and_determinism():
    items = [_item(f"i{k}") for k in range(6)]
    capped = capo_pairs(items, "A2", rejected_valid="any", max_pairs_per_item=2, seed=3)
    assert {r["id"] for r in capped} == {f"i{k}" for k in range(6)}
    assert max(sum(r["id"] == i for r in capped) for i in {r["id"] for r in capped}) == 2
    again = capo_pairs(list(reversed(items)), "A2", rejected_valid="any", max_pairs_per_item=2, seed=3)
    assert json.dumps(capped) == json.dumps(again)
    other_seeds = [capo_pairs(items, "A2", rejected_valid="any", max_pairs_per_item=2, seed=s) for s in range(4, 8)]
    assert any(json.dumps(rows) != json.dumps(capped) for rows in other_seeds)


def test_pair_rendering_shares_the_prompt():
    row = capo_pairs([_item()], "A2")[0]
    assert row["prompt"] == [{"role": "user", "content": user_prompt(_item())}]
    chosen, rejected = row["chosen"][0], row["rejected"][0]
    assert chosen["role"] == rejected["role"] == "assistant"
    assert parse_response(chosen["content"], "nli") == (row["chosen_label"], "Sleeping is resting." if
                                                        row["chosen_label"] == "entailment" else "He may be restless.")
    assert parse_response(rejected["content"], "nli")[0] == row["rejected_label"]


def test_sft_rows_one_per_valid_label():
    rows = sft_rows([_item()], "A2")
    assert [r["label"] for r in rows] == ["entailment", "neutral"]
    assert rows[1]["completion"] == [{"role": "assistant", "content": "Label: neutral\nExplanation: He may be restless."}]
    with pytest.raises(DataError, match="valid: A1, A2, A3, A4"):
        sft_rows([_item()], "A5")


def test_sft_rows_pass_the_validity_predicate():
    # By default SFT keeps what CAPO's chosen side keeps: A1's self-corrected neutral and A4's peer-rejected response
    # are not trained on.
    assert [r["label"] for r in sft_rows([_item()], "A1")] == ["entailment"]
    assert sft_rows([_item()], "A4") == []
    assert [r["label"] for r in sft_rows([_item()], "A1", valid="any")] == ["entailment", "neutral"]
    assert [r["label"] for r in sft_rows([_item()], "A4", valid="not_self_corrected")] == ["contradiction"]
    assert {r["label"] for r in sft_rows([_item()], "A1", valid="any")} - {
        r["label"] for r in sft_rows([_item()], "A1", valid="not_self_corrected")} == {"neutral"}
    with pytest.raises(DataError, match="unknown validity predicate 'sensible'"):
        sft_rows([_item()], "A1", valid="sensible")
    # On VariErr the default drops rows: the self-corrected and peer-rejected ones.
    train = load_task_data("nli").items("train")
    every, valid = sft_rows(train, "A3", valid="any"), sft_rows(train, "A3")
    assert 0 < len(valid) < len(every)
    by_id = {i.id: i for i in train}
    dropped = {(r["id"], r["label"]) for r in every} - {(r["id"], r["label"]) for r in valid}
    assert all(any(a.label == label and (a.self_corrected or sum(a.peer_votes()) * 2 <= len(a.peer_votes()))
                   for a in by_id[i].by_annotator("A3")) for i, label in dropped)


def test_few_shot_does_not_change_which_pairs_are_kept():
    items = [_item(f"i{k}") for k in range(8)]
    key = lambda rows: [(r["id"], r["chosen_label"], r["rejected_annotator"], r["rejected_label"]) for r in rows]
    for seed in range(3):
        plain = capo_pairs(items, "A2", rejected_valid="any", max_pairs_per_item=2, seed=seed)
        shots = capo_pairs(items, "A2", rejected_valid="any", max_pairs_per_item=2, seed=seed, few_shot=2,
                           few_shot_pool=items)
        assert key(plain) == key(shots)
        assert all("few_shot_ids" not in r for r in plain)
        assert all(len(r["few_shot_ids"]) == 2 and r["id"] not in r["few_shot_ids"] for r in shots)
        assert all(r["prompt"][0]["content"].count("Example:") == 2 for r in shots)
    # The few-shot draw is seeded too, and changes with the seed.
    draws = [[r["few_shot_ids"] for r in capo_pairs(items, "A2", seed=s, few_shot=2, few_shot_pool=items)]
             for s in (0, 0, 1)]
    assert draws[0] == draws[1] != draws[2]


def test_own_jsonl_as_the_dataset(tmp_path):
    items = [_item(f"q{k}") for k in range(20)]
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(item_to_json(i)) + "\n" for i in items))
    train_ids = set(split_items(items, seed=4).train)
    for script in ("data_prep/build_pairs.py", "data_prep/build_sft.py"):
        out = tmp_path / f"{script[10:-3]}.jsonl"
        result = call_script(script, "--annotator", "A2", "--dataset", path, "--split_seed", "4", "--output", out)
        assert result.returncode == 0, result.stderr
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert rows and {r["id"] for r in rows} == train_ids
    bad = call_script("data_prep/build_sft.py", "--annotator", "A2", "--dataset", path, "--task", "paraphrase")
    assert bad.returncode == 2 and bad.stderr.strip() == f"error: dataset {str(path)!r} holds nli items, not paraphrase"
    bad = call_script("data_prep/build_sft.py", "--annotator", "A2", "--dataset", tmp_path / "none.jsonl")
    assert bad.returncode == 2 and "unknown dataset" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_split_isolation_and_few_shot_from_training_history():
    data = load_task_data("nli")
    train_ids = {i.id for i in data.items("train")}
    held_out = {i.id for s in ("dev", "test") for i in data.items(s)}
    assert train_ids and held_out and not train_ids & held_out
    pairs = capo_pairs(data.items("train"), "A1")
    rows = sft_rows(data.items("train"), "A1", few_shot=2, few_shot_pool=data.items("train"))
    assert pairs and rows
    assert {r["id"] for r in pairs} <= train_ids and {r["id"] for r in rows} <= train_ids
    by_id = {i.id: i for i in data.items("train")}
    for row in rows[:20]:
        text = row["prompt"][0]["content"]
        assert text.count("Example:") == 2
        assert by_id[row["id"]].inputs["hypothesis"] not in text.split("Example:", 1)[1].rsplit("\n\n", 1)[0]
    held = {i.id: i for s in ("dev", "test") for i in data.items(s)}
    assert not any(render_inputs(i) in row["prompt"][0]["content"] for row in rows for i in held.values())
    paraphrase = load_task_data("paraphrase")
    assert paraphrase.items("train") and paraphrase.items("dev") and not paraphrase.items("test")
    with pytest.raises(DataError, match="valid: nli, paraphrase"):
        load_task_data("sentiment")


def test_cli_byte_identical_and_errors(tmp_path):
    out_a, out_b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for out in (out_a, out_b):
        result = call_script("data_prep/build_pairs.py", "--annotator", "A3", "--max_pairs_per_item", "2", "--seed", "5",
                            "--output", out)
        assert result.returncode == 0, result.stderr
    assert out_a.read_bytes() == out_b.read_bytes()
    rows = [json.loads(line) for line in out_a.read_text().splitlines()]
    assert rows and all(r["annotator"] == "A3" != r["rejected_annotator"] for r in rows)
    bad = call_script("data_prep/build_pairs.py", "--annotator", "A9", "--output", tmp_path / "c.jsonl")
    assert bad.returncode == 2 and bad.stderr.strip() == "error: unknown annotator 'A9' (valid: A1, A2, A3, A4)"
    assert not (tmp_path / "c.jsonl").exists()
    bad = call_script("data_prep/build_sft.py", "--annotator", "A1", "--task", "ner")
    assert bad.returncode == 2 and "valid: nli, paraphrase" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_preview_shows_loss_mask_and_rejects_prompt_mismatch(corpus_lm, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(corpus_lm)
    rows = capo_pairs([_item()], "A2")
    prompt_ids, completion_ids = split_prompt_completion(tokenizer, rows[0]["prompt"], rows[0]["chosen"])
    assert tokenizer.decode(prompt_ids).endswith("<|assistant|>\n")
    assert tokenizer.decode(completion_ids).startswith("Label: ")
    text = preview(rows, tokenizer, 1)
    assert "[[Label]]" in text and "Sleeping" not in text.split("[[Label]]")[0].split("<|assistant|>")[-1]
    assert text.count("--- row") == 1
    # A template that renders the prompt differently depending on the response breaks the shared prefix.
    tokenizer.chat_template = ("{% if messages[-1]['content'].startswith('Label: n') %}!{% endif %}"
                               + tokenizer.chat_template)
    with pytest.raises(DataError, match="item i1"):
        preview(rows, tokenizer, 1)
    result = call_script("data_prep/build_sft.py", "--annotator", "A4", "--preview", "2", "--model", corpus_lm)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("--- row") == 2 and "[[Label]]" in result.stdout


def test_one_conditioned_adapter_gets_every_annotators_rows_with_its_id_in_the_prompt():
    items = [_item("i2"), _item("i1")]
    rows = for_annotators(sft_rows, items, "all")
    per_annotator = {a: sft_rows(items, a) for a in ("A1", "A2", "A3", "A4")}
    assert len(rows) == sum(len(r) for r in per_annotator.values()) and {r["annotator"] for r in rows} == {"A1", "A2", "A3"}
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)  # item-major: any prefix covers every annotator
    for row in rows:
        content = row["prompt"][0]["content"]
        assert content.startswith(persona_line(row["annotator"]) + "\n\n")
        # the rest of the prompt and the completion are the single-annotator row's
        single = next(r for r in per_annotator[row["annotator"]] if r["id"] == row["id"] and r["label"] == row["label"])
        assert content[len(persona_line(row["annotator"])) + 2 :] == single["prompt"][0]["content"]
        assert row["completion"] == single["completion"]
    assert for_annotators(sft_rows, items, "A2") == sft_rows(items, "A2")  # one annotator: unchanged

    pairs = for_annotators(capo_pairs, items, "all", max_pairs_per_item=2)
    assert {p["annotator"] for p in pairs} == {"A1", "A2", "A3"}
    for pair in pairs:  # the target's response is chosen under the target's id, never another's
        assert pair["prompt"][0]["content"].startswith(persona_line(pair["annotator"]))
        assert pair["rejected_annotator"] != pair["annotator"]
    assert len({json.dumps(p["prompt"]) for p in pairs if p["id"] == "i1"}) == 3  # one prompt per target
