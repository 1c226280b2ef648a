"""Likelihood attribution: explanation token masks, batched scoring, win rates, bootstrap gains, held-out items by the
adapters' manifests, the corpus LM's pre-training items, and the CLI (adapters really trained: tests/test_heldout.py)."""

from __future__ import annotations

import json

import pytest
from conftest import call_script, load_script

from capo.data.datasets import load_task_data
from capo.data.heldout import training_record
from capo.evaluate.behaviour.attribution import (
    Scored,
    _explanation_mask,
    control_annotator,
    item_win_rates,
    paired_gain,
    score_annotations,
)
from capo.io import write_json


def test_win_rates_count_ties_half_and_average_per_item():
    scored = [
        Scored("a", "A1", "neutral", -1.0), Scored("a", "A1", "entailment", -3.0),  # A1 gave two labels
        Scored("a", "A2", "neutral", -2.0), Scored("a", "A3", "neutral", -1.0),
        Scored("b", "A1", "neutral", -5.0), Scored("b", "A4", "neutral", -4.0),
        Scored("c", "A2", "neutral", -1.0),  # no A1 response: not an item for A1
    ]
    rates = item_win_rates(scored, "A1")
    assert rates == {"a": pytest.approx((1 + 0.5 + 0 + 0) / 4), "b": 0.0}
    assert item_win_rates(scored, "A4") == {"b": 1.0}
    assert control_annotator("A4") == "A1" and control_annotator("A2") == "A3"
    # A subset of annotators controls within itself, so only its adapters are needed.
    assert control_annotator("A2", ["A1", "A2"]) == "A1" and control_annotator("A3", ["A3"]) == "A4"


def test_paired_gain_interval():
    base = {str(k): 0.5 for k in range(40)}
    better = [{str(k): 0.5 + (0.4 if k % 2 else 0.0) for k in range(40)}]
    result = paired_gain(better, base, seed=1)
    assert result["gain"] == pytest.approx(0.2) and result["items"] == 40
    assert result["low"] < 0.2 < result["high"] and result["low"] > 0.05
    assert paired_gain(better, base, seed=1) == result  # seeded
    same = paired_gain([base], base)
    assert same["gain"] == same["low"] == same["high"] == 0.0


def test_mask_and_batched_scores_match_a_direct_computation(corpus_lm):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(corpus_lm)
    model = AutoModelForCausalLM.from_pretrained(corpus_lm)
    items = load_task_data("nli").items("dev")[:3]
    annotation = items[0].annotations[0]
    ids, mask = _explanation_mask(tokenizer, items[0], annotation.label, annotation.explanation)
    assert tokenizer.decode([t for t, m in zip(ids, mask) if m]) == " " + annotation.explanation + "<|end|>"
    scored = score_annotations(model, tokenizer, items, batch_size=4)  # padded batches of unequal lengths
    assert len(scored) == sum(len(i.annotations) for i in items)
    for item, annotation, row in [(i, a, s) for i in items for a, s in zip(i.annotations, [
            s for s in scored if s.item == i.id])][:5]:
        ids, mask = _explanation_mask(tokenizer, item, annotation.label, annotation.explanation)
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].float(), -1)
        picked = [logprobs[k - 1, ids[k]].item() for k in range(1, len(ids)) if mask[k]]
        assert row.annotator == annotation.annotator
        assert row.score == pytest.approx(sum(picked) / len(picked), abs=1e-4)


def _adapters(corpus_lm, root, zero: bool, split_seed: int = 0, annotators=("A1", "A2", "A3", "A4")):
    """A LoRA adapter per annotator: zero-initialised (identical to base) or random (a different model), with a run
    manifest saying it trained on every training item of VariErr split `split_seed`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    data = load_task_data("nli", split_seed=split_seed)
    for k, annotator in enumerate(annotators):
        torch.manual_seed(k)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(corpus_lm),
                               LoraConfig(r=4, target_modules="all-linear", init_lora_weights=zero or False))
        folder = root / "seed0" / "nli" / annotator
        model.save_pretrained(folder)
        record = training_record(data, annotator, [i.id for i in data.items("train")])
        write_json(folder / "run_manifest.json", {"stage": "sft", "training_data": record})
    return str(root / "seed{seed}" / "{task}" / "{annotator}")


def test_cli_identity_adapters_gain_nothing_and_random_ones_differ(corpus_lm, tmp_path):
    zero = _adapters(corpus_lm, tmp_path / "zero", zero=True)
    noisy = _adapters(corpus_lm, tmp_path / "noisy", zero=False)
    out = tmp_path / "report.json"
    result = call_script("eval/attribution.py", "--model", corpus_lm, "--adapter", f"same={zero}",
                        "--adapter", f"noisy={noisy}", "--splits", "dev", "--limit", "20", "--output", out)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["limit"] == 20 and report["dtype"] == "float32"
    assert set(report["annotators"]) == {"A1", "A2", "A3", "A4"} and "| A1 |" in result.stdout
    rates = []
    for target, row in report["annotators"].items():
        assert 0 < row["items"] <= 20  # --limit: the first 20 dev items
        assert row["same"]["gain"]["gain"] == pytest.approx(0, abs=1e-9)
        assert row["same"]["win_rate_mean"] == pytest.approx(row["base"])
        assert row["same"]["control"]["model_of"] == control_annotator(target)
        rates.append(row["noisy"]["win_rate_mean"] - row["base"])
    assert any(abs(r) > 1e-3 for r in rates)


def test_scores_dir_resumes_at_the_next_model_and_ignores_other_settings(corpus_lm, tmp_path):
    """Each model's scores are kept as it finishes; a rerun reads them back (a stored file is really used: edited
    scores show in the report) unless the items, base or dtype differ, when the model is scored again."""
    noisy = _adapters(corpus_lm, tmp_path / "noisy", zero=False, annotators=("A1", "A2"))
    cli = load_script("eval/attribution.py")
    scores = tmp_path / "scores"

    def run(*extra):
        return cli.main(["--model", str(corpus_lm), "--adapter", f"noisy={noisy}", "--annotators", "A1", "A2",
                         "--splits", "dev", "--scores_dir", str(scores), *extra])

    first = run("--limit", "8")
    files = sorted(scores.glob("*.json"))
    assert len(files) == 3  # base, A1's adapter, A2's adapter
    assert run("--limit", "8") == first  # read back: the same report, to the last digit
    stored = {f: json.loads(f.read_text()) for f in files}
    a1 = next(f for f, d in stored.items() if d["keys"] == ["noisy 0 A1"])
    # A1's model now prefers A1's explanations everywhere: its win rate for target A1 becomes 1
    stored[a1]["scores"]["noisy 0 A1"] = [[i, a, lab, 0.0 if a == "A1" else -99.0]
                                          for i, a, lab, _ in stored[a1]["scores"]["noisy 0 A1"]]
    a1.write_text(json.dumps(stored[a1]))
    edited = run("--limit", "8")
    assert edited["annotators"]["A1"]["noisy"]["win_rate_mean"] == 1.0 != first["annotators"]["A1"]["noisy"][
        "win_rate_mean"]
    a2, a2_before = edited["annotators"]["A2"]["noisy"], first["annotators"]["A2"]["noisy"]
    assert a2["per_seed"] == a2_before["per_seed"]  # A2's own model untouched; A1's model is its control
    assert a2["control"]["win_rate_mean"] != a2_before["control"]["win_rate_mean"]
    rescored = run("--limit", "6")  # other items: every model scored again, the files rewritten
    fresh = cli.main(["--model", str(corpus_lm), "--adapter", f"noisy={noisy}", "--annotators", "A1", "A2",
                      "--splits", "dev", "--limit", "6"])
    assert rescored["annotators"] == fresh["annotators"]
    after = [json.loads(f.read_text())["items"] for f in files]
    assert after[0] == after[1] == after[2] != stored[a1]["items"]


def test_a_conditioned_explainer_is_scored_with_each_targets_id(corpus_lm, tmp_path):
    """A template without {annotator}: one adapter, prompted as each target; the persona line moves the scores."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from capo.data.prompts import persona_line

    tokenizer = AutoTokenizer.from_pretrained(corpus_lm)
    item = load_task_data("nli").items("dev")[0]
    annotation = item.annotations[0]
    ids, mask = _explanation_mask(tokenizer, item, annotation.label, annotation.explanation, persona="A2")
    assert persona_line("A2") in tokenizer.decode(ids)
    assert tokenizer.decode([t for t, m in zip(ids, mask) if m]) == " " + annotation.explanation + "<|end|>"
    model = AutoModelForCausalLM.from_pretrained(corpus_lm)
    plain, as_a2 = (score_annotations(model, tokenizer, [item], persona=p) for p in (None, "A2"))
    assert any(abs(a.score - b.score) > 1e-4 for a, b in zip(plain, as_a2))

    template = _adapters(corpus_lm, tmp_path / "cond", zero=True, annotators=("all",)).replace("{annotator}", "all")
    out, kept = tmp_path / "report.json", tmp_path / "scores"
    result = call_script("eval/attribution.py", "--model", corpus_lm, "--adapter", f"cond={template}",
                        "--annotators", "A1", "A2", "--splits", "dev", "test", "--output", out, "--scores_dir", kept)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["annotators"]["A1"]["cond"]["control"]["model_of"] == "A2"
    # A zero adapter is the base model, but prompted as each target: every target's scores move away from the base
    # model's and differ between targets. (Scores, not win rates: a win rate counts rankings, which a small shift
    # changes on one CPU's rounding and not on another's.)
    stored = [json.loads(f.read_text())["scores"] for f in kept.glob("*.json")]
    by_key = {key: {tuple(row[:3]): row[3] for row in rows} for scores in stored for key, rows in scores.items()}
    base, as_a1, as_a2 = by_key["base"], by_key["cond 0 A1"], by_key["cond 0 A2"]
    assert base.keys() == as_a1.keys() == as_a2.keys() and len(base) > 10
    for persona in (as_a1, as_a2):
        assert sum(abs(persona[k] - base[k]) > 1e-3 for k in base) > len(base) / 2
    assert sum(abs(as_a1[k] - as_a2[k]) > 1e-3 for k in base) > len(base) / 2


def test_items_follow_the_adapters_split_and_pretraining_items_are_counted(corpus_lm, tmp_path, capsys):
    """Adapters trained on split seed 1: their dev items, of which the corpus LM (split seed 0) saw some."""
    template = _adapters(corpus_lm, tmp_path / "seed1", zero=True, split_seed=1, annotators=("A1", "A2"))
    dev = {i.id for i in load_task_data("nli", split_seed=1).items("dev")}
    seen = len(dev & set(load_task_data("nli").split().train))
    assert 0 < seen < len(dev)
    reports = {}
    for exclude in ("false", "true"):
        capsys.readouterr()
        out = tmp_path / f"{exclude}.json"
        load_script("eval/attribution.py").main(["--model", str(corpus_lm), "--adapter", f"same={template}", "--annotators", "A1", "A2",
                     "--splits", "dev", "--exclude_pretrained", exclude, "--output", str(out)])
        reports[exclude] = json.loads(out.read_text()), capsys.readouterr().out
    assert reports["false"][0]["items"] == len(dev) and reports["true"][0]["items"] == len(dev) - seen
    assert f"{seen} of {len(dev)} items are in the base model's pre-training corpus" in reports["false"][1]
    assert f"leaving out {seen} of {len(dev)} items the base model was pre-trained on" in reports["true"][1]



def test_cli_errors_are_one_line(corpus_lm, tmp_path, capsys):
    cli = load_script("eval/attribution.py")
    for argv, expected in (
        (["--adapter", f"x={tmp_path}/{{annotator}}"], f"error: {tmp_path}/A1: adapter folder not found"),
        (["--splits", "train"], "error: attribution is measured on held-out items"),
        (["--adapter", "sft"], "error: --adapter expects KIND=TEMPLATE"),
        (["--annotators", "A0"], "error: unknown annotator 'A0'"),
        (["--exclude_pretrained", "maybe"], "error: field 'exclude_pretrained': expected true or false"),
        (["--limit", "0"], "error: field '--limit': --limit must be at least 1"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["--model", str(corpus_lm), *argv])
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and err.startswith(expected) and len(err.splitlines()) == 1, err


def _tokenizer_with_turn_end(corpus_lm, turn_end: str, tmp_path):
    """The corpus LM's tokenizer whose chat template ends every turn with `turn_end` instead of its eos (`<|end|>`),
    as Gemma ends turns with `<end_of_turn>` and has `<eos>`; `turn_end` is made a special token when it is new."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(corpus_lm)
    if turn_end and turn_end not in tokenizer.get_vocab():
        tokenizer.add_tokens([turn_end], special_tokens=True)
    tokenizer.chat_template = ("{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '"
                               + turn_end + "' + '\n' }}{% endfor %}"
                               "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")
    tokenizer.save_pretrained(tmp_path / "tokenizer")  # the template and the new token survive a reload
    return AutoTokenizer.from_pretrained(tmp_path / "tokenizer")


def test_the_turn_end_is_found_when_it_is_not_eos(corpus_lm, tmp_path):
    """The explanation's scored tokens end with the token that closes the assistant's turn, whichever it is: the old
    lookup of eos after the explanation raised a bare ValueError for such templates."""
    from transformers import AutoModelForCausalLM

    item = load_task_data("nli").items("dev")[0]
    annotation = item.annotations[0]
    for end in ("<end_of_turn>", "<|endoftext|>"):  # a new special token; one the model already has (not eos)
        tokenizer = _tokenizer_with_turn_end(corpus_lm, end, tmp_path / end.strip("<|>"))
        assert tokenizer.eos_token == "<|end|>" and tokenizer.eos_token not in tokenizer.apply_chat_template(
            [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], tokenize=False)
        ids, mask = _explanation_mask(tokenizer, item, annotation.label, annotation.explanation)
        assert tokenizer.decode([t for t, m in zip(ids, mask) if m]) == " " + annotation.explanation + end
        assert tokenizer.convert_ids_to_tokens([t for t, m in zip(ids, mask) if m][-1]) == end  # one token
    # scored with the model (its vocabulary has <|endoftext|>): the turn's end is part of every explanation's score
    model = AutoModelForCausalLM.from_pretrained(corpus_lm)
    scored = score_annotations(model, tokenizer, [item])
    assert len(scored) == len(item.annotations) and all(s.score < 0 for s in scored)


def test_a_template_without_a_turn_end_is_a_located_error(corpus_lm, tmp_path):
    from capo.errors import DataError

    tokenizer = _tokenizer_with_turn_end(corpus_lm, "", tmp_path)  # turns end with a newline only
    item = load_task_data("nli").items("dev")[0]
    annotation = item.annotations[0]
    with pytest.raises(DataError) as err:
        _explanation_mask(tokenizer, item, annotation.label, annotation.explanation)
    assert str(err.value) == (
        f"{tmp_path / 'tokenizer'}: item {item.id}: field 'chat_template': the chat template writes no special "
        "token after the assistant's message ('\\n'), so the end of its turn, scored with the explanation, cannot be "
        "found")
