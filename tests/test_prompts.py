import pytest

from capo.data.formats.varierr import load_varierr
from capo.data.prompts import parse_response, render_response, user_prompt
from capo.data.registry import load_items


def test_nli_prompt_shows_instruction_inputs_and_few_shot_examples():
    items = load_varierr()
    item, example = items[0], items[1]
    text = user_prompt(item, few_shot=[(example, example.annotations[0])])
    assert text.index("entailment") < text.index("Example:") < text.index(f"Context: {item.inputs['premise']}")
    assert f"Statement: {item.inputs['hypothesis']}" in text
    assert render_response(example.annotations[0].label, example.annotations[0].explanation) in text


def test_paraphrase_prompt_uses_questions():
    item = load_items("lewidi-par-dev")[0]
    text = user_prompt(item)
    assert f"Question 1: {item.inputs['question1']}" in text and "-5" in text


@pytest.mark.parametrize(
    "text,task,expected",
    [
        ("Label: neutral\nExplanation: Not said.", "nli", ("neutral", "Not said.")),
        ("  Label: N \nExplanation:  multi\nline ", "nli", ("neutral", "multi\nline")),
        ("Label: +3\nExplanation: similar", "paraphrase", ("3", "similar")),
        ("Label: maybe\nExplanation: hmm", "nli", None),
        ("Label: 7\nExplanation: off the scale", "paraphrase", None),
        ("Explanation: no label", "nli", None),
        ("Label: entailment\nExplanation:", "nli", None),
        # the instruction's own words for the NLI labels; they mean nothing on the Likert scale
        ("Label: Undetermined\nExplanation: not said", "nli", ("neutral", "not said")),
        ("Label: false\nExplanation: opposite", "nli", ("contradiction", "opposite")),
        ("Label: true\nExplanation: same", "paraphrase", None),
    ],
)
def test_parse_response(text, task, expected):
    assert parse_response(text, task) == expected


def test_render_parse_round_trip_on_real_annotations():
    for item in load_varierr()[:50]:
        for a in item.annotations:
            assert parse_response(render_response(a.label, a.explanation), "nli") == (a.label, a.explanation.strip())


def test_render_chat_is_the_one_renderer(corpus_lm):
    from transformers import AutoTokenizer

    from capo.data.prompts import prompt_messages, render_chat, response_messages
    from capo.errors import DataError

    tokenizer = AutoTokenizer.from_pretrained(corpus_lm)
    item = load_varierr()[0]
    messages = prompt_messages(item)
    text = render_chat(tokenizer, messages)
    assert text == render_chat(tokenizer, messages[0]["content"])  # a string is one user message
    assert text.startswith("<|user|>\n") and text.endswith("<|end|>\n<|assistant|>\n")
    assert render_chat(tokenizer, messages, tokenize=True) == tokenizer(text, add_special_tokens=False)["input_ids"]
    full = messages + response_messages("neutral", "Not said.")
    without = render_chat(tokenizer, full, generation_prompt=False)
    assert without.endswith("Label: neutral\nExplanation: Not said.<|end|>\n") and "<|assistant|>\n" in without
    assert render_chat(tokenizer, "Answer:", chat_template=False) == "Answer:\n"  # base models: the plain text
    tokenizer.chat_template = None
    with pytest.raises(DataError, match="field 'chat_template': .*no chat template") as err:
        render_chat(tokenizer, messages)
    assert "\n" not in str(err.value)


# Qwen3's switch, cut down: the assistant thinks first (an open <think> block) unless enable_thinking is false, which
# closes an empty block so that the answer is the first thing the model writes.
THINKING_TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% else %}<think>\n{% endif %}{% endif %}"
)


def test_render_chat_switches_thinking_off_where_the_template_thinks_first(corpus_lm):
    from transformers import AutoTokenizer

    from capo.data.prompts import prompt_messages, render_chat
    from capo.generate.labels import scoring_prompt

    tokenizer = AutoTokenizer.from_pretrained(corpus_lm)
    item = load_varierr()[0]
    messages = prompt_messages(item)
    plain = render_chat(tokenizer, messages)
    tokenizer.chat_template = THINKING_TEMPLATE
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True).endswith("<think>\n")
    text = render_chat(tokenizer, messages)
    assert text == plain + "<think>\n\n</think>\n\n"  # the answer (and its first token) comes next
    assert render_chat(tokenizer, messages, tokenize=True) == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert scoring_prompt(tokenizer, item).endswith("</think>\n\nLabel:")  # label scores: no thinking before it
