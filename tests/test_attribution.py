"""Likelihood attribution: explanation token masks, batched scoring, win rates, bootstrap gains, held-out items by the
adapters' manifests, the corpus LM's pre-training items, and the CLI (adapters really trained: tests/test_heldout.py)."""

from __future__ import annotations

import json

import pytest
from conftest import call_script, load_script

from capo.data.datasets import load_task_data
from capo.data.heldout import training_record
from capo.evaluate.attribution import (
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
    out = tmp_path / "report.json"
    result = call_script("eval/attribution.py", "--model", corpus_lm, "--adapter", f"cond={template}",
                        "--annotators", "A1", "A2", "--splits", "dev", "test", "--output", out)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    # a zero adapter is the base model, but prompted as the target: the win rates move, and differ by target
    rows = report["annotators"]
    assert all(abs(row["cond"]["win_rate_mean"] - row["base"]) > 1e-4 for row in rows.values())
    assert rows["A1"]["cond"]["control"]["model_of"] == "A2"


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
