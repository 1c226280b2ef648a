"""Prompt and response rendering shared by the corpus LM, SFT/CAPO data, generation, MJDs and evaluation.

A response is always `Label: <label>\nExplanation: <text>`; `parse_response` is its inverse. `render_chat` is the one
place messages become the text (or token ids) a model reads.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from capo.data.schema import TASK_INPUTS, Annotation, Item, label_space
from capo.errors import DataError

INSTRUCTIONS = {
    "nli": (
        "Read the context and the statement. Decide whether the statement is true (entailment), undetermined "
        "(neutral) or false (contradiction) given the context, and explain why. "
        "Answer as 'Label: <entailment|neutral|contradiction>' and then 'Explanation: <one or two sentences>'."
    ),
    "paraphrase": (
        "Read the two questions. Rate how much they are paraphrases of each other on a scale from -5 (clearly "
        "not) to 5 (clearly the same question), and explain why. "
        "Answer as 'Label: <-5..5>' and then 'Explanation: <one or two sentences>'."
    ),
}
# The instruction's own words for the labels: a prompted model may answer with them.
LABEL_WORDS = {"nli": {"true": "entailment", "undetermined": "neutral", "false": "contradiction"}}
INPUT_NAMES = {"premise": "Context", "hypothesis": "Statement", "question1": "Question 1", "question2": "Question 2"}
_RESPONSE = re.compile(r"^\s*Label:\s*(?P<label>[^\n]*?)\s*\n\s*Explanation:\s*(?P<explanation>.*?)\s*$", re.DOTALL)


def render_inputs(item: Item) -> str:
    return "\n".join(f"{INPUT_NAMES[name]}: {item.inputs[name]}" for name in TASK_INPUTS[item.task])


def render_response(label: str, explanation: str) -> str:
    return f"Label: {label}\nExplanation: {explanation.strip()}"


def persona_line(annotator: str) -> str:
    """The line that tells a conditioned explainer (one adapter for all annotators) whom to write as."""
    return f"You are annotator {annotator}: answer as {annotator} would."


def user_prompt(item: Item, few_shot: Sequence[tuple[Item, Annotation]] = (), annotator: str | None = None) -> str:
    """Optional persona line (the conditioned explainer's annotator id), instruction, optional worked examples (from
    the target annotator's own training history), the item."""
    parts = ([persona_line(annotator)] if annotator else []) + [INSTRUCTIONS[item.task]]
    for example_item, annotation in few_shot:
        parts.append(
            f"Example:\n{render_inputs(example_item)}\n{render_response(annotation.label, annotation.explanation)}"
        )
    parts.append(render_inputs(item))
    return "\n\n".join(parts)


def prompt_messages(item: Item, few_shot: Sequence[tuple[Item, Annotation]] = (), annotator: str | None = None
                    ) -> list[dict[str, str]]:
    return [{"role": "user", "content": user_prompt(item, few_shot, annotator)}]


def response_messages(label: str, explanation: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": render_response(label, explanation)}]


def parse_response(text: str, task: str) -> tuple[str, str] | None:
    """(label, explanation) from a generated response, or None when it does not follow the format. A label may be
    written as the instruction words it (`LABEL_WORDS`)."""
    match = _RESPONSE.match(text)
    if not match or not match["explanation"]:
        return None
    label = match["label"]
    label = LABEL_WORDS.get(task, {}).get(label.strip().lower(), label)
    try:
        return label_space(task).normalise(label), match["explanation"]
    except ValueError:
        return None


def render_chat(
    tokenizer, messages: str | Sequence[Mapping[str, str]], *, generation_prompt: bool = True,
    tokenize: bool = False, chat_template: bool = True,
) -> str | list[int]:
    """`messages` (a string is one user message) as the model reads them: the tokenizer's chat template, followed
    by the assistant's opening when `generation_prompt` (thinking switched off where the template can think first:
    `_no_thinking`). `tokenize` gives the token ids instead of the text.

    `chat_template=False` (base models) gives the messages' contents, one per line, ending in a newline.
    """
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if not chat_template:
        text = "".join(m["content"] + "\n" for m in messages)
        return tokenizer(text, add_special_tokens=False)["input_ids"] if tokenize else text
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("the model's tokenizer has no chat template (use an instruction-tuned model, add one, or "
                        "set chat_template: false where offered)", path=getattr(tokenizer, "name_or_path", None),
                        field="chat_template")
    options = {"add_generation_prompt": generation_prompt, **_no_thinking(tokenizer)}
    if not tokenize:
        return tokenizer.apply_chat_template(list(messages), tokenize=False, **options)
    return list(tokenizer.apply_chat_template(list(messages), tokenize=True, return_dict=True, **options)["input_ids"])


def _no_thinking(tokenizer) -> dict:
    """`enable_thinking=False` for a template that has the switch (Qwen3: it then closes an empty `<think>` block
    after the assistant's opening). Labels are read from the answer's first token, and a response must start with
    `Label:`, so the model must not think first."""
    return {"enable_thinking": False} if "enable_thinking" in str(tokenizer.chat_template) else {}
