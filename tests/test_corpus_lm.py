import json
import math

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from capo.data.formats.varierr import load_varierr
from capo.data.prompts import parse_response, prompt_messages
from capo.data.splits import split_items
from capo.models.corpus_lm import SIZES, corpus_documents


def test_corpus_lm_loads_like_a_hub_model_and_has_learned(corpus_lm):
    tokenizer = AutoTokenizer.from_pretrained(corpus_lm)
    model = AutoModelForCausalLM.from_pretrained(corpus_lm)
    assert model.config.model_type == "llama" and tokenizer.padding_side == "left"
    summary = json.loads((corpus_lm / "corpus_lm.json").read_text())
    # Bounded by steps, not seconds: every machine, however loaded, builds the same model.
    assert SIZES["test"].max_seconds is None and summary["steps"] == SIZES["test"].max_steps
    # Better than a uniform guess over the vocabulary on held-out text.
    assert summary["held_out_loss"] < math.log(len(tokenizer)) - 1.0
    text = tokenizer.apply_chat_template(prompt_messages(load_varierr()[0]), add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|user|>\n") and text.endswith("<|assistant|>\n")
    assert all(len(tokenizer.tokenize(letter)) == 1 for letter in "ABC")
    batch = tokenizer([text, text[:200]], return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=8, do_sample=False)
    assert out.shape[0] == 2 and out.shape[1] > batch["input_ids"].shape[1]


def test_chat_template_marks_assistant_tokens_for_assistant_only_loss(corpus_lm):
    tokenizer = AutoTokenizer.from_pretrained(corpus_lm)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Label: neutral\nExplanation: x"}]
    out = tokenizer.apply_chat_template(messages, return_assistant_tokens_mask=True, return_dict=True)
    masked = [t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tokenizer.decode(masked) == "Label: neutral\nExplanation: x<|end|>"


def test_corpus_never_contains_held_out_explanations():
    train_docs, held_out = corpus_documents(split_seed=0)
    items = load_varierr()
    split = split_items(items, seed=0)
    held_ids = set(split.dev) | set(split.test)
    corpus_text = "\n".join(message["content"] for doc in train_docs for message in doc)
    held_texts = [a.explanation for i in items if i.id in held_ids for a in i.annotations if len(a.explanation) > 60]
    train_texts = {a.explanation for i in items if i.id not in held_ids for a in i.annotations}
    leaked = [t for t in held_texts if t in corpus_text and t not in train_texts]
    assert held_texts and not leaked
    assert held_out and all(parse_response(doc[-1]["content"], "nli") for doc in held_out)


def test_pretraining_items_are_known_for_corpus_lms_only(corpus_lm, tmp_path):
    from capo.data.registry import load_items
    from capo.models.corpus_lm import pretraining_item_ids

    seen = pretraining_item_ids(corpus_lm)
    split = split_items(load_varierr(), seed=0)
    assert set(split.train) <= seen and not (set(split.dev) | set(split.test)) & seen
    # LeWiDi VariErrNLI test items that are VariErr train items would leak: they are flagged.
    assert any(item.id in seen for item in load_items("lewidi-ven-test"))
    assert pretraining_item_ids(tmp_path) == set()
