"""Multi-token label scoring through the one scoring engine (`capo.generate.scoring.label_log_probs`): the chain of
full-vocabulary next-token log-probabilities equals a direct teacher-forced log-probability of prompt + label, for
labels of 1, 2 and 3 tokens, on the base model and under LoRA adapters, with and without prefix reuse."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_adapter
from transformers import AutoModelForCausalLM, AutoTokenizer

from capo.data.datasets import load_task_data
from capo.data.prompts import prompt_messages, render_chat
from capo.errors import DataError
from capo.generate.scoring import HFScorer, label_log_probs

# Candidate label texts; the test picks, for the corpus LM's tokenizer, labels of 1, 2 and 3 tokens after "Label:".
CANDIDATES = (" entailment", " neutral", " contradiction", " -5", " 5", " 12", " maybe", " undetermined",
              " paraphrase", " zebra crossing", " not at all", " contradictions")


def teacher_forced(model, tokenizer, prompt: str, label: str) -> float:
    """log P(label | prompt) from one plain forward pass over prompt + label (no cache, no padding)."""
    n = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    ids = tokenizer(prompt + label, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits[:-1], dim=-1)
    return float(sum(logp[k - 1, ids[k]] for k in range(n, len(ids))))


@pytest.fixture(scope="module")
def setup(corpus_lm, tmp_path_factory):
    tokenizer = AutoTokenizer.from_pretrained(corpus_lm)
    items = load_task_data("nli").items("dev")[:3]
    prompts = [render_chat(tokenizer, prompt_messages(item)) + "Label:" for item in items]
    prompts.append("Context: a plain prompt without a chat template\nLabel:")
    n_tokens = {}
    for label in CANDIDATES:
        lengths = {len(tokenizer(p + label, add_special_tokens=False)["input_ids"])
                   - len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts}
        if len(lengths) == 1:
            n_tokens.setdefault(lengths.pop(), label)
    assert {1, 2, 3} <= set(n_tokens), n_tokens
    labels = [n_tokens[1], n_tokens[2], n_tokens[3]]
    root = tmp_path_factory.mktemp("label-adapters")
    adapters = {name: str(make_adapter(corpus_lm, root / name, seed)) for name, seed in (("A1", 1), ("A2", 2))}
    return tokenizer, prompts, labels, adapters


@pytest.mark.parametrize("min_shared_tokens", [None, 4])
def test_chained_log_probs_equal_teacher_forcing(corpus_lm, setup, min_shared_tokens):
    from peft import PeftModel

    tokenizer, prompts, labels, adapters = setup
    base = AutoModelForCausalLM.from_pretrained(corpus_lm, dtype=torch.float32).eval()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(corpus_lm, dtype=torch.float32),
                                      adapters["A1"], adapter_name="A1")
    model.load_adapter(adapters["A2"], adapter_name="A2")
    model.eval()
    scorer = HFScorer(model, tokenizer, batch_size=3, min_shared_tokens=min_shared_tokens)
    rows = prompts + prompts[:1]  # a repeated prompt gets its own (equal) row
    got = {name: label_log_probs(scorer, tokenizer, rows, labels, adapter=name) for name in (None, "A1", "A2")}
    for name, scores in got.items():
        assert scores.shape == (len(rows), len(labels)) and np.all(scores < 0)
        np.testing.assert_array_equal(scores[-1], scores[0])
        reference = base if name is None else PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(corpus_lm, dtype=torch.float32), adapters[name]).eval()
        direct = np.array([[teacher_forced(reference, tokenizer, p, lab) for lab in labels] for p in prompts])
        np.testing.assert_allclose(scores[:-1], direct, atol=1e-4, rtol=0)
    assert np.abs(got["A1"] - got["A2"]).max() > 1e-3 and np.abs(got["A1"] - got[None]).max() > 1e-3


def test_log_probs_are_normalised_over_the_vocabulary_and_logits_stay_the_default(corpus_lm, setup):
    tokenizer, prompts, _, _ = setup
    model = AutoModelForCausalLM.from_pretrained(corpus_lm, dtype=torch.float32).eval()
    scorer = HFScorer(model, tokenizer, min_shared_tokens=None)
    options = ["A", "B"]
    raw = scorer.score_next_token(prompts, options)
    logp = scorer.score_next_token(prompts, options, log_probs=True)
    with torch.inference_mode():
        logits = torch.stack([model(torch.tensor([tokenizer(p, add_special_tokens=False)["input_ids"]])).logits[0, -1]
                              for p in prompts]).float()
    ids = scorer.option_ids
    np.testing.assert_allclose(raw, logits[:, ids].numpy(), atol=1e-4)
    np.testing.assert_allclose(logp, torch.log_softmax(logits, -1)[:, ids].numpy(), atol=1e-4)


def test_a_label_that_merges_with_the_prompt_is_refused(corpus_lm, setup):
    tokenizer, prompts, _, _ = setup
    model = AutoModelForCausalLM.from_pretrained(corpus_lm, dtype=torch.float32).eval()
    scorer = HFScorer(model, tokenizer)
    # "Label: " + "entailment": the space before the label belongs to the label's first token, not the prompt.
    with pytest.raises(DataError, match="label 'entailment' after prompt 1 does not tokenize as the prompt's tokens"):
        label_log_probs(scorer, tokenizer, [prompts[0] + " "], ["entailment"])
    with pytest.raises(DataError, match="repeat"):
        label_log_probs(scorer, tokenizer, prompts, [" a", " a"])
