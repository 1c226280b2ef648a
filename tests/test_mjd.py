"""MJD estimator: option-order and permutation bookkeeping, normalisations, exactness against `generate`, runs."""

from __future__ import annotations

import itertools
import json
import math
import random
import re

import numpy as np
import pytest
from conftest import accelerate_launch_two_cpu_processes, load_script

from capo.data.formats.mjd_files import load_nli341
from capo.data.schema import Item
from capo.errors import DataError
from capo.generate.scoring import HFScorer
from capo.mjd.estimate import (
    OPTION_ORDERS,
    MJDSettings,
    estimate_mjds,
    explanation_orders,
    item_explanations,
    normalise,
    prompt_specs,
    to_label_order,
)
from capo.mjd.run import mjd_run, score_shards, write_results

NAMES = {"Entailment": 0, "Neutral": 1, "Contradiction": 2}


def _letters(prompt: str) -> dict[str, str]:
    """letter -> option name, as shown in the prompt."""
    return dict(re.findall(r"^([ABC])\. (\w+)$", prompt, flags=re.MULTILINE))


class PreferLabel:
    """Fake scorer: a high score for the letter bound to `label` (checks the letter -> label bookkeeping)."""

    def __init__(self, label: str) -> None:
        self.label = label

    def score_next_token(self, prompts, options, adapter=None):
        assert tuple(options) == ("A", "B", "C")
        rows = []
        for prompt in prompts:
            letters = _letters(prompt)
            rows.append([50.0 if letters[letter] == self.label else 0.0 for letter in "ABC"])
        return np.array(rows)


class PreferFirstComment:
    """Fake scorer: a high score for the letter of the label that the *first* comment chose (explicit mode)."""

    def score_next_token(self, prompts, options, adapter=None):
        rows = []
        for prompt in prompts:
            chosen = re.search(r"^Comment 1: .*So I choose (\w+)\.$", prompt, flags=re.MULTILINE).group(1)
            letters = _letters(prompt)
            rows.append([50.0 if letters[letter] == chosen else 0.0 for letter in "ABC"])
        return np.array(rows)


def _item(labels=("neutral", "neutral", "contradiction", "entailment")) -> Item:
    from capo.data.schema import Annotation

    return Item(
        id="x1", task="nli", inputs={"premise": "A man sleeps.", "hypothesis": "A person rests."},
        annotations=[Annotation(f"A{i + 1}", lab, f"Reason number {i}.") for i, lab in enumerate(labels)],
    )


@pytest.mark.parametrize("label", ["Entailment", "Neutral", "Contradiction"])
@pytest.mark.parametrize("mode", ["none", "serial", "parallel"])
def test_distribution_comes_back_in_enc_order(label, mode):
    item = _item()
    settings = MJDSettings(mode=mode, normalisation="prob")
    [result] = estimate_mjds([item], item_explanations([item], "human"), PreferLabel(label), settings, lambda t: t,
                             keep_prompts=True)
    assert np.argmax(result.distribution) == NAMES[label]
    assert result.distribution[NAMES[label]] > 0.999
    # every option order appears equally often, so each label sits at each letter equally often
    orders = [p["options"] for p in result.prompts]
    assert {orders.count(o) for o in set(orders)} == {len(orders) // 6}
    assert len(set(orders)) == 6


def test_serial_average_over_permutations_matches_label_counts():
    # Each explanation comes first in 1/4 of the 24 orders, so a scorer that follows the first comment's label gives
    # the label counts of the explanations: 2 neutral, 1 contradiction, 1 entailment.
    item = _item()
    settings = MJDSettings(mode="serial", explicit=True, normalisation="prob")
    [result] = estimate_mjds([item], item_explanations([item], "human"), PreferFirstComment(), settings,
                             lambda t: t, keep_prompts=True)
    assert np.allclose(result.distribution, [0.25, 0.5, 0.25], atol=1e-9)
    assert len(result.prompts) == 24 * 6
    assert sorted({tuple(p["explanations"]) for p in result.prompts}) == sorted(itertools.permutations(range(4)))


def test_explanation_orders_counts_and_seeded_sampling():
    rng = random.Random(0)
    assert explanation_orders(4, "none", None, 24, rng) == [()]
    assert len(explanation_orders(4, "serial", None, 24, rng)) == 24
    assert len(explanation_orders(4, "serial", 2, 24, rng)) == 12
    assert explanation_orders(4, "parallel", None, 24, rng) == [(0,), (1,), (2,), (3,)]
    assert explanation_orders(3, "serial", 7, 24, rng) == list(itertools.permutations(range(3)))  # k capped at n
    settings = MJDSettings(mode="serial", max_orders=10, seed=3)
    a, b = prompt_specs("item-a", 5, settings), prompt_specs("item-a", 5, settings)
    assert a == b and len(a) == 10 * 6  # 5! = 120 orders > 10: a sample of 10, the same every time
    orders = {s.explanations for s in a}
    assert len(orders) == 10 and all(sorted(o) == list(range(5)) for o in orders)
    assert {s.explanations for s in prompt_specs("item-b", 5, settings)} != orders  # per item
    with pytest.raises(DataError, match="no explanations"):
        explanation_orders(0, "serial", None, 24, rng)


def test_released_model_explanations_feed_the_prompts():
    from capo.data.formats.common import MODEL_EXPLANATIONS_DIR
    from capo.data.formats.mjd_files import load_model_explanations

    items = load_nli341()
    pairs = item_explanations(items, load_model_explanations(MODEL_EXPLANATIONS_DIR / "Llama3" / "Label-Free-first.json"))
    assert set(pairs) == {item.id for item in items}
    assert all(sorted(label for _, label in p) == ["contradiction", "entailment", "neutral"] for p in pairs.values())
    specs = prompt_specs(items[0].id, len(pairs[items[0].id]), MJDSettings(mode="serial"))
    assert len(specs) == 6 * 6  # 3! comment orders x 6 option orders
    with pytest.raises(DataError, match=r"item .*: field 'explanations'"):
        item_explanations(items, {items[0].id: [("why", "e")]})  # the other 340 items have none


def test_to_label_order():
    letter_scores = np.array([[1.0, 2.0, 3.0]] * 6)
    out = to_label_order(letter_scores, OPTION_ORDERS)
    # order (1, 2, 0) shows N at A, C at B, E at C: E gets C's score 3, N gets A's 1, C gets B's 2
    assert out[OPTION_ORDERS.index((1, 2, 0))].tolist() == [3.0, 1.0, 2.0]
    assert out[0].tolist() == [1.0, 2.0, 3.0]


def test_normalisations_hand_worked():
    assert np.allclose(normalise([[2.0, 3.0, 5.0]], "p_norm"), [[0.2, 0.3, 0.5]])
    e = math.e
    expected = [e / (e + 1 + 1 / e), 1 / (e + 1 + 1 / e), (1 / e) / (e + 1 + 1 / e)]  # 0.6652, 0.2447, 0.0900
    assert np.allclose(normalise([[20.0, 0.0, -20.0]], "p_softmax", temperature=20.0), [expected])
    assert np.allclose(normalise([[math.log(1), math.log(2), math.log(3)]], "prob"), [[1 / 6, 2 / 6, 3 / 6]])
    with pytest.raises(DataError) as err:
        normalise([[2.0, -1.0, 5.0]], "p_norm")
    assert "p_norm needs positive scores" in str(err.value) and "\n" not in str(err.value)


def test_p_norm_error_names_the_item():
    item = _item()
    with pytest.raises(DataError, match=r"item x1: field 'normalisation'"):
        estimate_mjds([item], {item.id: []}, PreferLabel("Neutral"), MJDSettings(mode="none", normalisation="p_norm"),
                      lambda t: t)


class NonFinite:
    """Fake scorer: the letter bound to `label` gets `value` (-inf, +inf or NaN), the others -1."""

    def __init__(self, label: str, value: float) -> None:
        self.label, self.value = label, value

    def score_next_token(self, prompts, options, adapter=None):
        return np.array([[self.value if _letters(p)[letter] == self.label else -1.0 for letter in options]
                         for p in prompts])


@pytest.mark.parametrize("value", [-math.inf, math.inf, math.nan])
def test_a_non_finite_letter_score_is_an_error_never_probability_zero(value):
    # A letter a backend did not see must not quietly become probability 0 (as a vLLM top-k -inf once did).
    item = _item()
    settings = MJDSettings(mode="none", normalisation="prob")
    with pytest.raises(DataError, match=r"item x1: field 'scores': scorer returned non-finite scores"):
        estimate_mjds([item], {item.id: []}, NonFinite("Neutral", value), settings, lambda t: t)


def test_bad_settings_are_one_line_errors():
    with pytest.raises(DataError, match="field 'mode'"):
        MJDSettings(mode="sideways")
    with pytest.raises(DataError, match="field 'normalisation'"):
        MJDSettings(normalisation="p_max")


# --- exactness on the tiny corpus LM ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm(corpus_lm):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(corpus_lm)
    model = AutoModelForCausalLM.from_pretrained(corpus_lm, dtype=torch.float32).eval()
    return model, tokenizer


class Counting:
    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def score_next_token(self, prompts, options, adapter=None):
        self.calls += 1
        return self.inner.score_next_token(prompts, options, adapter)


@pytest.mark.slow
def test_sharded_and_resumed_runs_equal_one_process(lm, tmp_path):
    from capo.data.prompts import render_chat

    model, tokenizer = lm
    items = load_nli341()[:7]
    explanations = item_explanations(items, "human")
    settings = MJDSettings(mode="parallel", normalisation="p_softmax")
    render = lambda content: render_chat(tokenizer, content)
    scorer = HFScorer(model, tokenizer, batch_size=8, min_shared_tokens=8)
    run = lambda out: mjd_run(out, items, items_per_chunk=2, signature={"settings": "parallel"})
    score = lambda out, scorer=scorer, **kw: score_shards(run(out), explanations, scorer, settings, render, **kw)

    assert score(tmp_path / "one") == [0, 1, 2, 3]  # 7 items in shards of 2, 2, 2, 1
    one = write_results(run(tmp_path / "one"))
    for rank in (1, 0):
        score(tmp_path / "two", process_index=rank, num_processes=2)
    two = write_results(run(tmp_path / "two"))
    assert list(one) == [item.id for item in items] and one == two  # bitwise identical

    # a kill before a shard's atomic rename: the shard is missing; a restart scores only that one, in one call
    run(tmp_path / "one").path(2).unlink()
    with pytest.raises(DataError, match="1 shard\\(s\\) not scored yet"):
        write_results(run(tmp_path / "one"))
    counting = Counting(scorer)
    assert score(tmp_path / "one", scorer=counting) == [2] and counting.calls == 1
    assert write_results(run(tmp_path / "one")) == one


@pytest.mark.slow
def test_recipe_end_to_end_and_eval_joins(corpus_lm, tmp_path, capsys):
    out = tmp_path / "run"
    summary = load_script("recipes/mjd.py").main([
        "--config", "recipes/configs/mjd_tiny_parallel.yaml", "--model_name_or_path", str(corpus_lm),
        "--output_dir", str(out), "--limit", "5", "--explicit", "true", "--save_raw_scores", "true",
    ])
    assert summary["items"] == 5 and summary["processes"] == 1
    rows = [json.loads(line) for line in (out / "mjd.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and all(abs(sum(r["distribution"]) - 1) < 1e-9 for r in rows)
    raw = [json.loads(line) for line in (out / "raw_scores.jsonl").read_text().splitlines()]
    assert len(raw[0]["prompts"]) == 4 * 6
    manifest = json.loads((out / "run_manifest.json").read_text())
    assert manifest["config"]["settings"]["mode"] == "parallel" and manifest["config"]["settings"]["explicit"]
    report = load_script("eval/distributions.py").main(["--human", str(out / "human_chaosnli.jsonl"),
                                                    "--model", str(out / "mjd.jsonl")])
    assert 0 < report["mjd"]["jsd"] < 1 and 0 <= report["mjd"]["dcorr"] <= 1

    # rerun with other settings into the same folder: refused before loading a model, one line, nothing overwritten
    before = (out / "mjd.jsonl").read_bytes()
    stderr = _fails(capsys, "--config", "recipes/configs/mjd_tiny_parallel.yaml", "--model_name_or_path", str(corpus_lm),
                    "--output_dir", str(out), "--limit", "5")
    assert "other settings (explicit, save_raw_scores;" in stderr and (out / "mjd.jsonl").read_bytes() == before


def _fails(capsys, *argv: str) -> str:
    """Run recipes/mjd.py in-process; it must exit 2 with exactly one `error:` line on stderr. Returns that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        load_script("recipes/mjd.py").main(list(argv))
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2 and stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    return stderr


def test_recipe_bad_input_is_one_line(tmp_path, capsys, corpus_lm):
    model = ["--model_name_or_path", str(corpus_lm)]
    stderr = _fails(capsys, "--config", "recipes/configs/mjd_tiny.yaml", "--output_dir", str(tmp_path / "x"),
                    "--explanations", str(tmp_path / "missing.json"), *model)
    assert "missing.json" in stderr and "file not found" in stderr
    stderr = _fails(capsys, "--config", "recipes/configs/mjd_tiny.yaml", "--output_dir", str(tmp_path / "x"),
                    "--mode", "sideways", *model)
    assert "field 'mode'" in stderr
    stderr = _fails(capsys, "--config", "recipes/configs/mjd_tiny.yaml", "--output_dir", str(tmp_path / "x"),
                    "--model_name_or_path", str(tmp_path / "no-model"))
    assert "model folder not found" in stderr and "no-model" in stderr
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())  # nothing written


@pytest.mark.slow
@pytest.mark.heavy
def test_two_processes_under_accelerate_launch_merge_to_the_one_process_result(corpus_lm, tmp_path):
    common = ["--config", "recipes/configs/mjd_tiny_parallel.yaml", "--model_name_or_path", str(corpus_lm),
              "--limit", "6", "--items_per_chunk", "2"]
    result = accelerate_launch_two_cpu_processes("recipes/mjd.py", *common, "--output_dir", tmp_path / "two")
    assert result.returncode == 0, result.stderr[-3000:]
    shards = sorted(p.name for p in (tmp_path / "two" / "shards").iterdir())
    assert shards == ["shard-00000.jsonl", "shard-00001.jsonl", "shard-00002.jsonl"]
    summary = json.loads((tmp_path / "two" / "run_manifest.json").read_text())["summary"]
    assert summary["processes"] == 2 and summary["shards_scored_here"] == 2  # rank 0: shards 0, 2; rank 1 did 1

    load_script("recipes/mjd.py").main([*common, "--output_dir", str(tmp_path / "one")])
    read = lambda run: [json.loads(line) for line in (tmp_path / run / "mjd.jsonl").read_text().splitlines()]
    one, two = read("one"), read("two")
    assert [r["id"] for r in one] == [r["id"] for r in two]  # merged in input order
    # the same chunks scored the same way; only the BLAS thread count differs from the in-process run
    assert np.allclose([r["distribution"] for r in one], [r["distribution"] for r in two], rtol=0, atol=1e-9)
