"""Training data for one target annotator: SFT rows and CAPO (cross-annotator preference) pairs.

SFT rows are conversational prompt/completion rows, one per (item, label) the target gave. A CAPO pair prefers the
target's own valid response on an item (chosen) over another annotator's valid response on the same item (rejected),
so the preference step learns what is specific to the target rather than what is merely correct.

Which items (data set, task, split) is the data stage's business (`capo.data.datasets`); callers pass the training
split here, and dev/test items only to build the held-out evaluation sets. A row lists the items it shows (`id`, and
`few_shot_ids` when there are worked examples), which is what an adapter's run manifest records as trained on.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence

from capo.data.prompts import prompt_messages, render_chat, response_messages
from capo.data.schema import ANNOTATORS, CONDITIONED, Annotation, Item, check_annotator
from capo.data.splits import few_shot_examples, few_shot_rng, history
from capo.data.validity import Predicate, predicate
from capo.errors import DataError

REJECTED_FROM = ("all", "same_label", "different_label")
# The validity every training response must pass by default: CAPO's chosen and rejected sides and SFT rows.
DEFAULT_VALIDITY = "peer_majority_not_self_corrected"


def normalise_text(text: str) -> str:
    """Case-, whitespace- and punctuation-insensitive form used to drop pairs whose two texts are the same."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _with_examples(row: dict, examples: list[tuple[Item, Annotation]], few_shot: int) -> dict:
    if few_shot:
        row["few_shot_ids"] = [item.id for item, _ in examples]
    return row


def sft_rows(
    items: Sequence[Item],
    annotator: str,
    *,
    few_shot: int = 0,
    few_shot_pool: Sequence[Item] = (),
    valid: str | Predicate = DEFAULT_VALIDITY,
    seed: int = 0,
    conditioned: bool = False,
) -> list[dict]:
    """One conversational prompt/completion row per (item, label) the annotator gave on `items` that passes `valid`
    (a `capo.data.validity` name or predicate; default the one CAPO's chosen side uses; "any" keeps every response).

    `few_shot_pool` should be the training items: few-shot examples come only from the target's training history,
    and only from responses that pass `valid` too. `conditioned` puts the annotator's id in the prompt (rows of the
    one adapter trained for all annotators: `for_annotators`).
    """
    check_annotator(annotator)
    ok = predicate(valid) if isinstance(valid, str) else valid
    rng = few_shot_rng(seed)
    pool_history = history(few_shot_pool, annotator, valid=ok) if few_shot else []
    rows = []
    for item, annotation in history(items, annotator, valid=ok):
        examples = few_shot_examples(pool_history, item, few_shot, rng)
        rows.append(_with_examples({
            "id": item.id,
            "annotator": annotator,
            "label": annotation.label,
            "prompt": prompt_messages(item, examples, annotator if conditioned else None),
            "completion": response_messages(annotation.label, annotation.explanation),
        }, examples, few_shot))
    return rows


def capo_pairs(
    items: Sequence[Item],
    annotator: str,
    *,
    rejected_from: str = "all",
    chosen_valid: str = DEFAULT_VALIDITY,
    rejected_valid: str = DEFAULT_VALIDITY,
    max_pairs_per_item: int | None = None,
    few_shot: int = 0,
    few_shot_pool: Sequence[Item] = (),
    seed: int = 0,
    conditioned: bool = False,
) -> list[dict]:
    """Cross-annotator preference pairs for `annotator` on `items` (pass the training split).

    chosen = the target's response on an item that passes `chosen_valid`; rejected = another annotator's response on
    the same item that passes `rejected_valid`, restricted by `rejected_from` (all others, same label only, different
    label only). Pairs whose two texts are identical after normalisation are dropped; at most `max_pairs_per_item`
    pairs per item are kept, sampled with `seed`. Few-shot examples (the target's `chosen_valid` responses on
    `few_shot_pool`) come from a separate generator, so they never change which pairs are kept. Same inputs and
    seed -> the same rows in the same order. `conditioned` puts the target's id in the prompt (`for_annotators`).
    """
    check_annotator(annotator)
    if rejected_from not in REJECTED_FROM:
        raise DataError(f"unknown rejected_from {rejected_from!r} (valid: {', '.join(REJECTED_FROM)})")
    if max_pairs_per_item is not None and max_pairs_per_item < 1:
        raise DataError(f"max_pairs_per_item must be at least 1, got {max_pairs_per_item}")
    chosen_ok, rejected_ok = predicate(chosen_valid), predicate(rejected_valid)
    pool_history = history(few_shot_pool, annotator, valid=chosen_ok) if few_shot else []
    rng, shot_rng = random.Random(seed), few_shot_rng(seed)
    rows = []
    for item in sorted(items, key=lambda i: i.id):  # input order must not change the output
        candidates = []
        for chosen in item.by_annotator(annotator):
            if not chosen_ok(item, chosen):
                continue
            for rejected in item.annotations:
                if rejected.annotator in (None, annotator) or not rejected_ok(item, rejected):
                    continue
                same = rejected.label == chosen.label
                if (rejected_from == "same_label" and not same) or (rejected_from == "different_label" and same):
                    continue
                if normalise_text(chosen.explanation) == normalise_text(rejected.explanation) and same:
                    continue
                candidates.append((chosen, rejected))
        if not candidates:
            continue
        if max_pairs_per_item is not None and len(candidates) > max_pairs_per_item:
            keep = sorted(rng.sample(range(len(candidates)), max_pairs_per_item))
            candidates = [candidates[k] for k in keep]
        examples = few_shot_examples(pool_history, item, few_shot, shot_rng)
        prompt = prompt_messages(item, examples, annotator if conditioned else None)
        for chosen, rejected in candidates:
            rows.append(_with_examples(
                {
                    "id": item.id,
                    "annotator": annotator,
                    "rejected_annotator": rejected.annotator,
                    "chosen_label": chosen.label,
                    "rejected_label": rejected.label,
                    "prompt": prompt,
                    "chosen": response_messages(chosen.label, chosen.explanation),
                    "rejected": response_messages(rejected.label, rejected.explanation),
                }, examples, few_shot))
    return rows


def for_annotators(build: Callable[..., list[dict]], items: Sequence[Item], annotator: str, **options) -> list[dict]:
    """`build(items, annotator, **options)` (`sft_rows` or `capo_pairs`) for one annotator; for CONDITIONED ("all"),
    the rows of all four annotators with each one's id in the prompt (one adapter for every annotator; a CAPO pair
    prefers the target's response under the target's id), ordered by item so that any prefix covers every annotator.
    """
    if annotator != CONDITIONED:
        return build(items, annotator, **options)
    rows = [row for a in ANNOTATORS for row in build(items, a, conditioned=True, **options)]
    return sorted(rows, key=lambda row: row["id"])  # stable: annotators stay in order within an item


def split_prompt_completion(tokenizer, prompt: list[dict], completion: list[dict]) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) of prompt + completion, cut where TRL cuts: after the tokenised prompt.

    Raises DataError when the prompt alone does not tokenise to a prefix of prompt + completion (the model would
    then train on a context it never sees at inference)."""
    prompt_ids = render_chat(tokenizer, prompt, tokenize=True)
    full_ids = render_chat(tokenizer, prompt + completion, generation_prompt=False, tokenize=True)
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise DataError("the tokenised prompt is not a prefix of the tokenised prompt + response (chat template?)")
    return prompt_ids, full_ids[len(prompt_ids) :]


def render_masked(tokenizer, prompt_ids: Sequence[int], completion_ids: Sequence[int]) -> str:
    """Tokens separated by '|'; tokens that carry loss are wrapped in [[...]]."""
    show = lambda ids: [tokenizer.decode([t]).replace("\n", "\\n") for t in ids]
    return "|".join(show(prompt_ids) + [f"[[{t}]]" for t in show(completion_ids)])


def preview(rows: Sequence[dict], tokenizer, n: int) -> str:
    """The first `n` rows tokenised with the loss mask visible; fails if a pair's prompts tokenise differently."""
    blocks = []
    for k, row in enumerate(rows):
        where = {"item": row.get("id")}
        try:
            if "completion" in row:
                prompt_ids, completion_ids = split_prompt_completion(tokenizer, row["prompt"], row["completion"])
                views = {"completion": (prompt_ids, completion_ids)}
            else:
                views = {side: split_prompt_completion(tokenizer, row["prompt"], row[side]) for side in ("chosen", "rejected")}
                if views["chosen"][0] != views["rejected"][0]:
                    raise DataError("chosen and rejected prompts tokenise differently")
        except DataError as err:
            raise err.at(**where) from None
        if k < n:
            lines = [f"--- row {k}: item {row.get('id')} ({len(next(iter(views.values()))[0])} prompt tokens)"]
            lines += [f"{side} ({len(c)} loss tokens): {render_masked(tokenizer, p, c)}" for side, (p, c) in views.items()]
            blocks.append("\n".join(lines))
    return "\n".join(blocks)
