"""The explainer jury (`eval/jury.py`, `capo.evaluate.distributions.jury.run_jury`): per-annotator label
probabilities averaged into one distribution per item, every item written, the items the explainers trained on
counted (and left out on request), and the file read by `eval/distributions.py` beside the ChaosNLI HJD."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from conftest import load_script, make_adapter

from capo.data.datasets import load_task_data
from capo.data.distributions import read_distributions
from capo.data.formats.jsonl import item_to_json
from capo.data.formats.mjd_files import load_nli341
from capo.data.heldout import training_record
from capo.io import write_json


def _direct(corpus_lm, adapter: str | None, item) -> np.ndarray:
    """P(entailment, neutral, contradiction) for one item under one adapter, straight from the engine."""
    from scipy.special import softmax

    from capo.data.prompts import prompt_messages, render_chat
    from capo.generate.backends.hf import HFBackend
    from capo.generate.scoring import label_log_probs

    backend = HFBackend(str(corpus_lm), {"x": adapter} if adapter else {}, dtype="float32")
    prompt = render_chat(backend.tokenizer, prompt_messages(item)) + "Label:"
    logp = label_log_probs(backend.scorer, backend.tokenizer, [prompt], [" entailment", " neutral", " contradiction"],
                           "x" if adapter else None)
    return softmax(logp[0])


@pytest.fixture(scope="module")
def jury_setup(corpus_lm, tmp_path_factory):
    """Five of the 341 items as a capo JSONL file; A1 trained (by its manifest) on the first of them, A2 on none."""
    root = tmp_path_factory.mktemp("jury")
    items = [dataclasses.replace(item, annotations=[]) for item in load_nli341()[:5]]
    data_file = root / "five.jsonl"
    data_file.write_text("".join(json.dumps(item_to_json(item)) + "\n" for item in items))
    data = load_task_data("nli")
    for annotator, seed, trained in (("A1", 3, [items[0].id]), ("A2", 4, [data.items("train")[0].id])):
        folder = make_adapter(corpus_lm, root / "nli" / annotator, seed)
        write_json(folder / "run_manifest.json",
                   {"stage": "sft", "training_data": training_record(data, annotator, trained)})
    return {"items": items, "data": str(data_file), "template": str(root / "{task}" / "{annotator}")}


def test_jury_averages_the_annotators_probabilities(corpus_lm, jury_setup, tmp_path, capsys):
    items, template = jury_setup["items"], jury_setup["template"]
    out, human = tmp_path / "jury.jsonl", tmp_path / "human.jsonl"
    report = load_script("eval/jury.py").main(
        ["--model", str(corpus_lm), "--explainers", template, "--annotators", "A1", "A2", "--dataset",
         jury_setup["data"], "--output", str(out), "--human_output", str(human)])
    assert "1 of 5 items are in the explainers' training data" in capsys.readouterr().out
    assert report["in_training"] == 1 and report["in_training_per_adapter"] == {"A1": 1, "A2": 0}
    jury = read_distributions(out)
    assert list(jury) == [item.id for item in items]  # every item, in order
    per_adapter = {a: {item.id: _direct(corpus_lm, template.format(task="nli", annotator=a), item) for item in items}
                   for a in ("A1", "A2")}
    for item in items:
        np.testing.assert_allclose(jury[item.id], (per_adapter["A1"][item.id] + per_adapter["A2"][item.id]) / 2,
                                   atol=1e-5)
        assert np.abs(per_adapter["A1"][item.id] - per_adapter["A2"][item.id]).max() > 1e-4  # two real votes
    assert read_distributions(human) == {item.id: pytest.approx(item.distributions["chaosnli"]) for item in items}
    compared = load_script("eval/distributions.py").main(["--human", str(human), "--model", str(out), "--json"])
    assert set(compared["jury"]) >= {"kl", "jsd", "tvd"}
    # Held-out only: the item A1 trained on is left out.
    report = load_script("eval/jury.py").main(
        ["--model", str(corpus_lm), "--explainers", template, "--annotators", "A1", "A2", "--dataset",
         jury_setup["data"], "--output", str(out), "--heldout_only", "true"])
    assert report["items"] == 4 and list(read_distributions(out)) == [item.id for item in items[1:]]


def test_base_model_jury_covers_the_341_items_and_counts_pretraining(corpus_lm, tmp_path):
    from capo.models.corpus_lm import pretraining_item_ids

    out = tmp_path / "base.jsonl"
    report = load_script("eval/jury.py").main(["--model", str(corpus_lm), "--output", str(out)])
    items = load_nli341()
    jury = read_distributions(out)  # validated: three probabilities summing to 1 per item
    assert list(jury) == [item.id for item in items] and len(jury) == 341 and report["predictor"] == "base"
    seen = {item.id for item in items} & pretraining_item_ids(corpus_lm)
    assert seen and report["in_base_pretraining"] == len(seen) and report["in_training"] == 0
    report = load_script("eval/jury.py").main(["--model", str(corpus_lm), "--output", str(out),
                                               "--exclude_pretrained", "true"])
    assert report["items"] == 341 - len(seen) and not set(read_distributions(out)) & seen


def test_jury_help_and_errors_are_one_line(corpus_lm, jury_setup, tmp_path, capsys):
    cli = load_script("eval/jury.py")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("usage: eval/jury.py")
    out = str(tmp_path / "j.jsonl")
    for argv, expected in (
        (["--explainers", f"{tmp_path}/{{annotator}}"], f"error: {tmp_path}/A1: adapter folder not found"),
        (["--annotators", "A9"], "error: unknown annotator 'A9'"),
        (["--heldout_only", "maybe"], "error: argument --heldout_only/--heldout-only: Truthy value expected"),
        (["--dataset", "lewidi-par-dev", "--human_output", str(tmp_path / "h.jsonl")],
         "error: lewidi-par-dev: item"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["--model", str(corpus_lm), "--output", out, *argv])
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and err.startswith(expected) and len(err.splitlines()) == 1, err
        assert not list(tmp_path.glob("*.jsonl"))
