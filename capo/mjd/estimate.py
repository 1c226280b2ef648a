"""Model judgment distributions (MJDs), the EMNLP 2024 method: an LLM's first-token scores of the option letters.

For every item, a multiple-choice prompt shows the context, the statement, optionally some explanations
("comments"), and the three NLI labels as options A/B/C. The next-token scores of the letters at the answer position
(read once, no decoding) are mapped back to labels, normalised per prompt, and averaged over

- all 6 orders of the options (so no label profits from a letter's position), and
- the explanation orders: `serial` puts k explanations in one prompt and averages over their ordered
  permutations (all of them, or a seeded sample of `max_orders` when there are more); `parallel` puts one
  explanation in each prompt and averages over the explanations; `none` shows no explanation.

Every distribution comes back in [entailment, neutral, contradiction] order. Scoring goes through the one
next-token scoring interface (`capo.generate.scoring.NextTokenScorer`, options A/B/C): the fast Hugging Face scorer
reuses shared prompt prefixes through the KV cache; any `capo.generate.backends.base.Backend` (vLLM included) scores
through the same `score_next_token`.

A run that saves its raw per-prompt letter scores (`recipes/mjd.py --save_raw_scores true`) is read back with
`read_raw_scores`; `mjd_variants` turns one item's scores into every estimator variant the MJD tables show (p_norm,
softmax at T = 1 and T = 20, and the log-space average, a position-bias diagnostic).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.special import log_softmax, softmax

from capo.data.formats.common import row_id
from capo.data.schema import NLI, Item
from capo.errors import DataError
from capo.generate.scoring import NextTokenScorer
from capo.io import iter_jsonl

OPTION_LETTERS: tuple[str, ...] = ("A", "B", "C")
OPTION_NAMES: tuple[str, ...] = ("Entailment", "Neutral", "Contradiction")  # index = NLI label index
# Option order o shows label o[j] at letter j; itertools order, so the identity order comes first.
OPTION_ORDERS: tuple[tuple[int, ...], ...] = tuple(itertools.permutations(range(len(NLI))))
MODES = ("none", "serial", "parallel")
NORMALISATIONS = ("p_norm", "p_softmax", "prob")
# The estimator variants `mjd_variants` computes from one item's raw scores (the MJD tables' rows per run).
VARIANTS = ("p_norm", "T=1", "T=20", "log-space")

INSTRUCTION = (
    "Is the statement true (entailment), undetermined (neutral) or false (contradiction) given the context? "
    "Pick ONE of the options below and begin your answer with its letter."
)
INSTRUCTION_WITH_COMMENTS = (
    "Read the comments below and base your choice on them, carefully and fairly. " + INSTRUCTION
)


@dataclass
class MJDSettings:
    """How prompts are built and scores turned into one distribution per item."""

    mode: str = "serial"  # none | serial | parallel
    k: int | None = None  # serial: explanations per prompt (None: all of the item's; capped at the item's count)
    explicit: bool = False  # append "So I choose <label>." to each explanation
    max_orders: int = 24  # most explanation orders per item; above it a seeded sample of distinct orders
    normalisation: str = "p_softmax"  # p_norm | p_softmax | prob
    temperature: float = 20.0  # p_softmax only
    seed: int = 0  # for sampling explanation orders (per item, so sharding does not change the sample)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise DataError(f"unknown mode {self.mode!r} (valid: {', '.join(MODES)})", field="mode")
        if self.normalisation not in NORMALISATIONS:
            raise DataError(
                f"unknown normalisation {self.normalisation!r} (valid: {', '.join(NORMALISATIONS)})", field="normalisation"
            )
        if self.k is not None and self.k < 1:
            raise DataError(f"k must be at least 1, got {self.k}", field="k")
        if self.max_orders < 1:
            raise DataError(f"max_orders must be at least 1, got {self.max_orders}", field="max_orders")
        if not self.temperature > 0:
            raise DataError(f"temperature must be positive, got {self.temperature}", field="temperature")


@dataclass(frozen=True)
class PromptSpec:
    """One prompt of an item: which label sits at each letter, and which explanations are shown, in order."""

    item_id: str
    option_order: tuple[int, ...]
    explanations: tuple[int, ...] = ()


@dataclass
class ItemMJD:
    id: str
    distribution: list[float]  # [E, N, C]
    prompts: list[dict] = field(default_factory=list)  # audit: per prompt, its spec and raw letter scores


# --- prompts --------------------------------------------------------------------------------------------------


def explanation_orders(n: int, mode: str, k: int | None, max_orders: int, rng: random.Random) -> list[tuple[int, ...]]:
    """The explanation index tuples to show, one per prompt (before crossing with the 6 option orders)."""
    if mode == "none":
        return [()]
    if n == 0:
        raise DataError("no explanations to show (use mode 'none')", field="explanations")
    size = 1 if mode == "parallel" else min(k or n, n)
    total = math.perm(n, size)
    if total <= max_orders:
        return list(itertools.permutations(range(n), size))
    chosen: dict[tuple[int, ...], None] = {}  # insertion-ordered set: the sample order is part of the seed
    while len(chosen) < max_orders:
        chosen.setdefault(tuple(rng.sample(range(n), size)), None)
    return list(chosen)


def prompt_specs(item_id: str, n_explanations: int, settings: MJDSettings) -> list[PromptSpec]:
    # Seeded by (seed, item id) so that any item subset or shard draws the same orders for an item.
    rng = random.Random(f"{settings.seed}:{item_id}")
    orders = explanation_orders(n_explanations, settings.mode, settings.k, settings.max_orders, rng)
    return [PromptSpec(item_id, option, order) for order in orders for option in OPTION_ORDERS]


def user_message(item: Item, explanations: Sequence[tuple[str, str]], spec: PromptSpec, explicit: bool = False) -> str:
    """The multiple-choice question (plain text, before any chat template)."""
    lines = [INSTRUCTION_WITH_COMMENTS if spec.explanations else INSTRUCTION]
    lines.append(f"Context: {item.inputs['premise'].strip()}")
    lines.append(f"Statement: {item.inputs['hypothesis'].strip()}")
    for number, index in enumerate(spec.explanations, start=1):
        text, label = explanations[index]
        comment = f"Comment {number}: {text.strip()}"
        if explicit:
            comment += f" So I choose {OPTION_NAMES[NLI.index(label)]}."
        lines.append(comment)
    lines.extend(f"{letter}. {OPTION_NAMES[label]}" for letter, label in zip(OPTION_LETTERS, spec.option_order))
    lines.append("Answer:")
    return "\n".join(lines)


# --- scores -> distributions ----------------------------------------------------------------------------------


def normalise(scores: np.ndarray, method: str, temperature: float = 20.0) -> np.ndarray:
    """Per-row distribution from raw scores (last axis): p_norm = s / sum(s), p_softmax = softmax(s / T), prob = softmax(s)."""
    scores = np.asarray(scores, dtype=np.float64)
    if method == "p_norm":
        if (scores <= 0).any():
            bad = float(scores[scores <= 0].flat[0])
            raise DataError(
                f"p_norm needs positive scores, got {bad:.4g} (this model's letter logits can be <= 0): "
                "use p_softmax or prob", field="normalisation"
            )
        return scores / scores.sum(axis=-1, keepdims=True)
    if method == "p_softmax":
        return softmax(scores / temperature, axis=-1)
    if method == "prob":
        return softmax(scores, axis=-1)
    raise DataError(f"unknown normalisation {method!r} (valid: {', '.join(NORMALISATIONS)})", field="normalisation")


def to_label_order(letter_scores: np.ndarray, option_orders: Sequence[Sequence[int]]) -> np.ndarray:
    """Scores per letter (A, B, C) -> scores per label [E, N, C], row by row."""
    letter_scores = np.asarray(letter_scores)
    out = np.empty_like(letter_scores)
    for row, order in enumerate(option_orders):
        out[row, list(order)] = letter_scores[row]
    return out


def mjd_variants(scores: np.ndarray) -> dict[str, np.ndarray | None]:
    """One item's MJD under each estimator variant (`VARIANTS`), from its (prompts x labels) raw scores in label order
    (`to_label_order`; `read_raw_scores` gives them per item), every prompt's letters mapped back to labels:

    - `p_norm`: s / sum(s) per prompt, averaged over prompts (the papers' default); None when a score is <= 0 (raw
      logits can be: p_norm is then undefined);
    - `T=1`, `T=20`: softmax(s / T) per prompt, averaged over prompts (`normalise`'s `prob` and `p_softmax`);
    - `log-space`: softmax of the mean over prompts of the per-prompt letter log-probabilities (log_softmax(s)). A
      position-bias diagnostic, not the papers' estimator: an additive bias b_j on the letter at position j reaches
      each label equally often over the 6 option orders (`OPTION_ORDERS`, crossed with every explanation order), so
      it adds the same mean(b) to every label's mean log-probability and cancels exactly in the softmax, where the
      probability average only flattens it."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or not len(scores) or not np.isfinite(scores).all():
        raise DataError(f"expected a non-empty (prompts x labels) array of finite scores, got shape {scores.shape}",
                        field="scores")
    return {
        "p_norm": normalise(scores, "p_norm").mean(axis=0) if (scores > 0).all() else None,
        "T=1": normalise(scores, "prob").mean(axis=0),
        "T=20": normalise(scores, "p_softmax", 20.0).mean(axis=0),
        "log-space": softmax(log_softmax(scores, axis=-1).mean(axis=0)),
    }


# --- raw scores (recipes/mjd.py --save_raw_scores true writes them: capo.mjd.run) -------------------------------


def _row_scores(row: Mapping, where: dict) -> np.ndarray:
    """One raw_scores.jsonl row's (prompts x labels) scores in label order; `where` locates errors."""
    prompts = row.get("prompts")
    if not isinstance(prompts, list) or not prompts:
        raise DataError("no per-prompt scores (run recipes/mjd.py with --save_raw_scores true)", field="prompts",
                        **where)
    rows = []
    for k, prompt in enumerate(prompts):
        prompt = prompt if isinstance(prompt, Mapping) else {}
        options, scores = str(prompt.get("options", "")), prompt.get("letter_scores")
        order = [NLI.short.index(letter.lower()) for letter in options if letter.lower() in NLI.short]
        if len(order) != len(NLI) or sorted(order) != list(range(len(NLI))) or not isinstance(scores, list) \
                or len(scores) != len(NLI):
            raise DataError("expected 'options' (a permutation of E, N, C) and 3 'letter_scores'",
                            field=f"prompts[{k}]", **where)
        if not all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in scores):
            # recipes/mjd.py never writes one: a NaN would turn the item's calibrated distribution into NaNs
            raise DataError(f"expected 3 finite numbers, got {scores}", field=f"prompts[{k}].letter_scores", **where)
        by_label = np.empty(len(NLI))
        by_label[order] = scores  # letter position i shows label order[i]
        rows.append(by_label)
    return np.asarray(rows)


def label_scores(raw_rows: Sequence[Mapping]) -> dict[str, np.ndarray]:
    """item id -> (prompts x labels) raw scores in label order, from raw_scores.jsonl rows."""
    return {str(row.get("id")): _row_scores(row, {"item": str(row.get("id"))}) for row in raw_rows}


def read_raw_scores(path: str | Path) -> tuple[dict[str, np.ndarray], list[dict]]:
    """(`label_scores`, the rows) of a raw_scores.jsonl, each row checked where it stands (file:line, item, field):
    an id (a row without one is refused, not dropped), once, and finite per-prompt scores."""
    scores: dict[str, np.ndarray] = {}
    rows = []
    for line, row in iter_jsonl(path):
        where = {"path": str(path), "line": line}
        item = row_id(row, where, scores)
        scores[item] = _row_scores(row, {**where, "item": item})
        rows.append(row)
    if not rows:
        raise DataError("no raw scores in file", path=str(path))
    return scores, rows


def item_explanations(items: Sequence[Item], source: str | Mapping[str, Sequence[tuple[str, str]]]) -> dict[str, list[tuple[str, str]]]:
    """Each item's (explanation, label) pairs: `human` (the item's annotations), `none`, or an id -> pairs map."""
    if source == "none":
        return {item.id: [] for item in items}
    if source == "human":
        return {item.id: [(a.explanation, a.label) for a in item.annotations] for item in items}
    if isinstance(source, str):
        raise DataError(f"unknown explanation source {source!r} (valid: human, none, or a loaded file)", field="explanations")
    missing = [item.id for item in items if item.id not in source]
    if missing:
        raise DataError(f"no explanations for {len(missing)} item(s)", item=missing[0], field="explanations")
    out = {}
    for item in items:
        try:
            out[item.id] = [(text, NLI.normalise(label)) for text, label in source[item.id]]
        except ValueError as err:
            raise DataError(str(err), item=item.id, field="explanations") from None
    return out


def estimate_mjds(
    items: Sequence[Item],
    explanations: Mapping[str, Sequence[tuple[str, str]]],
    scorer: NextTokenScorer,
    settings: MJDSettings,
    render: Callable[[str], str],
    keep_prompts: bool = False,
) -> list[ItemMJD]:
    """One MJD per item ([E, N, C]), in input order. All prompts of all items go to the scorer in one call, so it
    can sort, deduplicate and share prefixes across items."""
    specs: list[PromptSpec] = []
    texts: list[str] = []
    counts: list[int] = []
    if len({item.id for item in items}) != len(items):
        raise DataError("duplicate item ids in the input", field="id")
    for item in items:
        if item.task != "nli":
            raise DataError(f"MJDs are defined for NLI items, not {item.task!r}", item=item.id, field="task")
        pairs = explanations.get(item.id, [])
        try:
            item_specs = prompt_specs(item.id, len(pairs), settings)
        except DataError as err:
            raise err.at(item=item.id) from None
        specs.extend(item_specs)
        counts.append(len(item_specs))
        texts.extend(render(user_message(item, pairs, spec, settings.explicit)) for spec in item_specs)
    letter_scores = np.asarray(scorer.score_next_token(texts, OPTION_LETTERS), dtype=np.float64)
    if letter_scores.shape != (len(texts), len(OPTION_LETTERS)):
        raise DataError(f"scorer returned shape {letter_scores.shape}, expected {(len(texts), len(OPTION_LETTERS))}")
    # Every letter has a real score (the backends never fill in -inf for a letter they did not see), so a non-finite
    # score is a numerical failure (e.g. fp16 overflow): never average it into a distribution.
    bad = ~np.isfinite(letter_scores).all(axis=1)
    if bad.any():
        raise DataError("scorer returned non-finite scores (try float32 or bfloat16)", item=specs[int(bad.argmax())].item_id,
                        field="scores")
    label_scores = to_label_order(letter_scores, [s.option_order for s in specs])

    results, start = [], 0
    for item, count in zip(items, counts):
        block = slice(start, start + count)
        try:
            probs = normalise(label_scores[block], settings.normalisation, settings.temperature)
        except DataError as err:
            raise err.at(item=item.id) from None
        prompts = []
        if keep_prompts:
            prompts = [
                {
                    "options": "".join(NLI.short[label].upper() for label in spec.option_order),
                    "explanations": list(spec.explanations),
                    "letter_scores": [float(x) for x in letter_scores[row]],
                }
                for row, spec in zip(range(block.start, block.stop), specs[block])
            ]
        results.append(ItemMJD(item.id, [float(x) for x in probs.mean(axis=0)], prompts))
        start += count
    return results
