"""One next-token scoring interface for MJDs, label scoring and LLM judges: the scores of a few single-token options
(letters A-C or A-D, Likert numbers, ...) as the next token after each prompt, optionally under a LoRA adapter.

`NextTokenScorer` is the interface; the inference backends (`capo.generate.backends`) implement it, and `HFScorer`
is the Hugging Face implementation they share. `option_token_ids` is the one option-token check, and the ids it
returns are the ids every implementation scores: an option counts only if prompt + option tokenizes as the prompt's
own tokens plus exactly one more, after every prompt of the call, so a tokenizer whose bare "A" differs from the
"A" at the answer position (SentencePiece "▁A", a merge with the prompt's last characters) is scored at the
right id or refused, never scored at the wrong one.

`HFScorer` works on a transformers causal LM directly: one forward pass per distinct token sequence, reading
only the last position's logits (`logits_to_keep=1`, no `generate`). Prompts are tokenized, deduplicated and put
in a prefix tree (a radix trie over token ids); each tree node's tokens are encoded once into a KV cache that its
children continue from (`DynamicCache` rows gathered per child, explicit position ids and attention masks, so
rows padded on the left of each segment line up). It pads by itself, so the tokenizer's `padding_side` plays no
part. Prefixes are cut on token ids, never on text, so the tokens the model reads are exactly those of the full
prompt. The 6 option orders of an MJD item share everything up to the options; explanation permutations share their
leading explanations; all prompts share the instruction. `min_shared_tokens` pushes short shared segments down into
their children (fewer, larger forward passes); None scores every distinct prompt whole in plain length-sorted
batches (no prefix reuse, any model). With a PEFT model, `adapter` names the LoRA adapter to score under (None: the
base model, adapters disabled).

Scores are raw logits (what MJD normalisations and judges expect); `log_probs=True` gives full-vocabulary
log-probabilities instead, which `label_log_probs` chains over a label's tokens (labels such as ` entailment` or
` -5` are several tokens: one engine call per node of the labels' token trie).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from capo.errors import DataError


@runtime_checkable
class NextTokenScorer(Protocol):
    def score_next_token(self, prompts: Sequence[str], options: Sequence[str], adapter: str | None = None) -> np.ndarray:
        """Scores of each single-token option as the next token after each prompt: shape (prompts, options)."""
        ...


def _answer_contexts(tokenizer, prompts: Sequence[str], encoded: Sequence[Sequence[int]]) -> list[tuple[str, list[int], int]]:
    """The distinct (text, its tokens, first prompt row) that decide how an option after each prompt tokenizes.

    A tokenizer splits its added (special) tokens out of the text before anything else, so what follows a prompt's
    last added token is tokenized on its own: prompt + option tokenizes as the tokens before that added token plus
    those of (added token + the rest + option). A chat prompt's context is thus its short tail (the same for every
    prompt of one template), checked once instead of re-tokenizing every prompt. The split is verified (the tail
    alone must give the prompt's last tokens); a prompt without added tokens, or failing it, is its own context.
    """
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    tails: dict[int, str] = {}
    for row, (prompt, ids) in enumerate(zip(prompts, encoded)):
        for j in range(len(ids) - 1, -1, -1):
            if ids[j] in added:
                start = prompt.rfind(added[ids[j]].content)
                if start >= 0:
                    tails[row] = prompt[start:]
                break
    distinct_tails = list(dict.fromkeys(tails.values()))
    tail_ids = dict(zip(distinct_tails, tokenizer(distinct_tails, add_special_tokens=False)["input_ids"] if distinct_tails else []))
    contexts: dict[str, tuple[list[int], int]] = {}
    for row, (prompt, ids) in enumerate(zip(prompts, encoded)):
        tail = tails.get(row)
        if tail is not None and tail_ids[tail] and list(ids[len(ids) - len(tail_ids[tail]) :]) == tail_ids[tail]:
            contexts.setdefault(tail, (tail_ids[tail], row))
        else:
            contexts.setdefault(prompt, (list(ids), row))
    return [(text, ids, row) for text, (ids, row) in contexts.items()]


def option_token_ids(tokenizer, prompts: Sequence[str], options: Sequence[str],
                     encoded: Sequence[Sequence[int]] | None = None) -> list[int]:
    """The token id of each option at the end of the prompts, checked in context: for every prompt, prompt + option
    must tokenize as the prompt's tokens (`encoded`, when the caller has them) plus exactly one token, the same one
    after every prompt; the options' ids must be distinct."""
    name = getattr(tokenizer, "name_or_path", None) or "?"
    if not options:
        raise DataError("no options to score", field="options")
    if len(set(options)) != len(options):
        raise DataError(f"options {list(options)!r} repeat", field="options")
    if not prompts:
        return []
    if encoded is None:
        encoded = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    contexts = _answer_contexts(tokenizer, prompts, encoded)
    extended = tokenizer([text + o for text, _, _ in contexts for o in options], add_special_tokens=False)["input_ids"]
    ids: list[int] | None = None
    first_row = contexts[0][2]
    for k, (_, base, row) in enumerate(contexts):
        found = []
        for col, option in enumerate(options):
            full = extended[k * len(options) + col]
            if len(full) != len(base) + 1 or full[: len(base)] != base:
                raise DataError(f"option {option!r} is not a single token after prompt {row + 1} for tokenizer "
                                f"{name!r} (prompt + option does not tokenize as the prompt's tokens + one)",
                                field="options")
            found.append(full[-1])
        if ids is None:
            ids = found
        elif found != ids:
            raise DataError(f"options {list(options)!r} are tokens {ids} after prompt {first_row + 1} but {found} "
                            f"after prompt {row + 1} for tokenizer {name!r}", field="options")
    if len(set(ids)) != len(ids):
        raise DataError(f"options {list(options)!r} map to the same token ids {ids}", field="options")
    return ids


@contextmanager
def active_adapter(model, adapter: str | None) -> Iterator[None]:
    """Run under LoRA `adapter` of a PEFT model; None: the base model (adapters disabled, or no PEFT model)."""
    from peft import PeftModel

    loaded = list(model.peft_config) if isinstance(model, PeftModel) else []
    if adapter is None:
        if loaded:
            with model.disable_adapter():
                yield
        else:
            yield
        return
    if adapter not in loaded:
        raise DataError(f"unknown adapter {adapter!r} (loaded: {', '.join(loaded) or 'none'})", field="adapter")
    model.set_adapter(adapter, inference_mode=True)
    yield


@dataclass
class _Node:
    tokens: list[int]
    ends: list[int]  # indices of the distinct sequences that end at this node's last token
    children: list[_Node] = field(default_factory=list)


def _adjacent_common_prefix(seqs: Sequence[Sequence[int]], block: int = 4096) -> list[int]:
    """lcp[i] = length of the common prefix of seqs[i-1] and seqs[i] (lcp[0] = 0), vectorised in blocks."""
    lcp = [0] * len(seqs)
    for start in range(1, len(seqs), block):
        stop = min(len(seqs), start + block)
        rows = seqs[start - 1 : stop]
        width = max(map(len, rows)) + 1
        grid = np.full((len(rows), width), -1, dtype=np.int64)  # -1 never equals a token id: stops at the end
        for r, seq in enumerate(rows):
            grid[r, : len(seq)] = seq
        grid[:, -1] = -2 - np.arange(len(rows))  # distinct sentinels, so identical rows still stop
        differs = grid[1:] != grid[:-1]
        lcp[start:stop] = differs.argmax(axis=1).tolist()
    return lcp


def build_prefix_tree(sequences: Sequence[Sequence[int]], min_shared_tokens: int = 1) -> list[_Node]:
    """Roots of a radix trie over distinct, non-empty token sequences; `ends` index into `sequences`.

    A node without ends whose tokens are fewer than `min_shared_tokens` is merged into its children.
    """
    if len(set(map(tuple, sequences))) != len(sequences):
        raise ValueError("sequences must be distinct")
    if any(len(s) == 0 for s in sequences):
        raise ValueError("sequences must be non-empty")
    order = sorted(range(len(sequences)), key=lambda i: tuple(sequences[i]))
    seqs = [list(sequences[i]) for i in order]
    lcp = _adjacent_common_prefix(seqs)

    def build(lo: int, hi: int, depth: int) -> _Node:
        shared = min(lcp[lo + 1 : hi]) if hi - lo > 1 else len(seqs[lo])
        node = _Node(seqs[lo][depth:shared], [])
        if len(seqs[lo]) == shared:  # a sequence that is a prefix of the others sorts first
            node.ends.append(order[lo])
            lo += 1
        start = lo
        for i in range(lo + 1, hi + 1):
            if i == hi or lcp[i] == shared:
                node.children.append(build(start, i, shared))
                start = i
        return node

    def collapse(node: _Node, carried: list[int]) -> list[_Node]:
        tokens = carried + node.tokens
        if not node.ends and len(tokens) < min_shared_tokens:
            return [leaf for child in node.children for leaf in collapse(child, tokens)]
        node.tokens = tokens
        node.children = [leaf for child in node.children for leaf in collapse(child, [])]
        return [node]

    return collapse(build(0, len(seqs), 0), []) if seqs else []


class HFScorer:
    """Option scores (raw logits) from a transformers causal LM (or a PEFT model on one), with prefix-tree KV-cache
    reuse."""

    def __init__(self, model, tokenizer, *, batch_size: int = 32, min_shared_tokens: int | None = 16,
                 max_batch_tokens: int | None = None) -> None:
        if min_shared_tokens is not None and min_shared_tokens < 1:
            raise DataError(f"min_shared_tokens must be at least 1, got {min_shared_tokens}", field="min_shared_tokens")
        if batch_size < 1:
            raise DataError(f"batch_size must be at least 1, got {batch_size}", field="batch_size")
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        # rows x padded segment width per forward pass: lets short segments (option suffixes) go in wide batches
        self.max_batch_tokens = max_batch_tokens
        self.min_shared_tokens = sys.maxsize if min_shared_tokens is None else min_shared_tokens
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # masked: any id does
        self.option_ids: list[int] = []  # of the last call: the ids checked and scored
        self.stats: dict[str, int] = {}  # of the last call
        self.totals: dict[str, int] = {}  # summed over all calls

    def score_next_token(self, prompts: Sequence[str], options: Sequence[str], adapter: str | None = None, *,
                         log_probs: bool = False) -> np.ndarray:
        """Raw next-token logits of the options after each prompt, shape (prompts, options), float32; with
        `log_probs`, log-probabilities instead (log-softmax over the model's full vocabulary, as `generate` samples
        from), which is what a chain of next-token scores (`label_log_probs`) needs."""
        import torch

        texts = list(dict.fromkeys(prompts))  # identical prompts: tokenized, checked and scored once
        encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        self.option_ids = option_token_ids(self.tokenizer, texts, options, encoded)
        if not prompts:
            return np.zeros((0, len(options)), dtype=np.float32)
        distinct: dict[tuple[int, ...], int] = {}
        slot_of_text = [distinct.setdefault(tuple(ids), len(distinct)) for ids in encoded]
        text_row = {text: k for k, text in enumerate(texts)}
        slot = [slot_of_text[text_row[p]] for p in prompts]
        sequences = list(distinct)
        if any(not s for s in sequences):
            raise DataError("a prompt tokenizes to nothing", field="prompt")
        roots = build_prefix_tree(sequences, self.min_shared_tokens)
        self.stats = {"prompts": len(prompts), "distinct_prompts": len(sequences),
                      "prompt_tokens": sum(map(len, sequences)), "computed_tokens": 0, "padded_tokens": 0,
                      "attended_pairs": 0, "forward_passes": 0, "rows": 0}
        scores = np.full((len(sequences), len(options)), np.nan, dtype=np.float32)
        with torch.inference_mode(), active_adapter(self.model, adapter):
            self._run(roots, None, scores, log_probs)
        for key, value in self.stats.items():
            self.totals[key] = self.totals.get(key, 0) + value
        return scores[slot]

    def _gather(self, cache, rows):
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        if any(type(layer) is not DynamicLayer for layer in cache.layers):
            raise DataError("prefix reuse needs a full-attention model (plain DynamicCache layers); set "
                            "min_shared_tokens to None to score without it", field="min_shared_tokens")
        return DynamicCache([(layer.keys[rows], layer.values[rows]) for layer in cache.layers])

    def _batches(self, pairs: list[tuple[_Node, int]]):
        """Consecutive runs of the length-sorted nodes: at most batch_size rows and max_batch_tokens padded tokens."""
        start = 0
        while start < len(pairs):
            stop = start + 1
            while stop < len(pairs) and stop - start < self.batch_size and (
                self.max_batch_tokens is None or (stop + 1 - start) * len(pairs[stop][0].tokens) <= self.max_batch_tokens
            ):
                stop += 1
            yield pairs[start:stop]
            start = stop

    def _run(self, nodes: list[tuple[_Node, int]] | list[_Node], parent, scores: np.ndarray,
             log_probs: bool = False) -> None:
        """Encode `nodes` in length-sorted batches on top of `parent` = (cache, mask, lengths) or None; recurse."""
        import torch

        device = self.model.device
        pairs = [(n, -1) if isinstance(n, _Node) else n for n in nodes]
        pairs.sort(key=lambda pair: len(pair[0].tokens))
        for chunk in self._batches(pairs):
            width = len(chunk[-1][0].tokens)
            input_ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            seg_mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, (node, _) in enumerate(chunk):  # left-pad within the segment: the last column is always real
                input_ids[r, width - len(node.tokens) :] = torch.tensor(node.tokens)
                seg_mask[r, width - len(node.tokens) :] = 1
            input_ids, seg_mask = input_ids.to(device), seg_mask.to(device)
            if parent is None:
                cache, mask, base = None, seg_mask, torch.zeros(len(chunk), 1, dtype=torch.long, device=device)
            else:
                rows = torch.tensor([row for _, row in chunk], device=device)
                cache = self._gather(parent[0], rows)
                mask = torch.cat([parent[1][rows], seg_mask], dim=1)
                base = parent[2][rows]
            position_ids = (base + seg_mask.cumsum(dim=1) - 1).masked_fill(seg_mask == 0, 1)
            has_children = any(node.children for node, _ in chunk)
            out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                             past_key_values=cache, use_cache=has_children, logits_to_keep=1)
            last = out.logits[:, -1].float()
            picked = last[:, self.option_ids]
            if log_probs:  # normalised over the whole vocabulary, not over the options
                picked = picked - torch.logsumexp(last, dim=-1, keepdim=True)
            option_logits = picked.cpu().numpy()
            for r, (node, _) in enumerate(chunk):
                for end in node.ends:
                    scores[end] = option_logits[r]
            real = int(seg_mask.sum())
            self.stats["forward_passes"] += 1
            self.stats["rows"] += len(chunk)
            self.stats["computed_tokens"] += real
            self.stats["padded_tokens"] += seg_mask.numel() - real
            # Causal: the i-th new token of a row attends to the parent's keys and the segment's first i tokens.
            new, keys = seg_mask.sum(1), mask.sum(1)
            self.stats["attended_pairs"] += int((new * keys - new * (new - 1) // 2).sum())
            if has_children:
                children = [(child, r) for r, (node, _) in enumerate(chunk) for child in node.children]
                self._run(children, (out.past_key_values, mask, base + seg_mask.sum(dim=1, keepdim=True)), scores,
                          log_probs)
            del out, cache


def label_log_probs(scorer, tokenizer, prompts: Sequence[str], labels: Sequence[str],
                    adapter: str | None = None) -> np.ndarray:
    """log P(label | prompt) for every prompt and label, shape (prompts, labels), float64, by the chain rule.

    A label is scored as the tokens it has in context: prompt + label is tokenized as one text (as in training and
    generation), and must give the prompt's own tokens followed by the label's (else the label merges with the
    prompt's end, e.g. a prompt ending in a space before a label that starts with none: one-line DataError). The
    labels' tokens after each prompt form a trie; each trie node is one `scorer.score_next_token(..., log_probs=True)`
    call (every prompt that reaches a node with the same children shares it) whose options are the node's child
    tokens, so the engine stays the only forward path and each step is the full-vocabulary log-probability of the
    next token (raw option logits would not chain). The node prompts are prefixes of prompt + label cut at token
    ends; each is checked to tokenize as exactly those tokens, so the engine scores the label's own token ids.
    A label whose tokens are a prefix of another's scores only its own tokens (nothing about what follows them).
    """
    if not isinstance(scorer, HFScorer):
        scorer = getattr(scorer, "scorer", scorer)  # the HF backend's own HFScorer
    if not isinstance(scorer, HFScorer):
        raise DataError("label scoring chains full-vocabulary log-probabilities, which only the HF scorer returns "
                        f"(got {type(scorer).__name__}; the vLLM backend returns option logits)", field="scorer")
    labels = list(labels)
    if not labels:
        raise DataError("no labels to score", field="labels")
    if len(set(labels)) != len(labels):
        raise DataError(f"labels {labels!r} repeat", field="labels")
    texts = list(dict.fromkeys(prompts))
    if not texts:
        return np.zeros((0, len(labels)))
    name = getattr(tokenizer, "name_or_path", None) or "?"
    base = tokenizer(texts, add_special_tokens=False)["input_ids"]
    try:
        full = tokenizer([t + lab for t in texts for lab in labels], add_special_tokens=False,
                         return_offsets_mapping=True)
    except NotImplementedError:
        raise DataError(f"label scoring needs a fast tokenizer (character offsets); {name!r} has none",
                        field="tokenizer") from None
    # Per (text, label): the label's tokens and the text cut after each of them (a token's end offset is exact,
    # also where offsets are trimmed of leading spaces).
    paths: dict[tuple[int, int], tuple[tuple[int, ...], list[str]]] = {}
    for r, text in enumerate(texts):
        for j, label in enumerate(labels):
            ids, offsets = full["input_ids"][r * len(labels) + j], full["offset_mapping"][r * len(labels) + j]
            n = len(base[r])
            if len(ids) <= n or ids[:n] != base[r]:
                raise DataError(f"label {label!r} after prompt {r + 1} does not tokenize as the prompt's tokens "
                                f"followed by its own for tokenizer {name!r} (it merges with the prompt's end: mind "
                                "the space between them)", field="labels")
            cuts = [text + label[: offsets[k][1] - len(text)] for k in range(n - 1, len(ids))]
            cuts[0] = text
            paths[(r, j)] = (tuple(ids[n:]), cuts)
    # Every node prompt must tokenize as the prompt's tokens + the label tokens before it.
    nodes: dict[tuple[int, tuple[int, ...]], str] = {}
    children: dict[tuple[int, tuple[int, ...]], dict[int, str]] = {}
    for (r, _), (cont, cuts) in paths.items():
        for k in range(len(cont)):
            key = (r, cont[:k])
            nodes.setdefault(key, cuts[k])
            children.setdefault(key, {}).setdefault(cont[k], cuts[k + 1][len(cuts[k]) :])
    inner = [key for key in nodes if key[1]]
    if inner:
        encoded = tokenizer([nodes[key] for key in inner], add_special_tokens=False)["input_ids"]
        for (r, prefix), ids in zip(inner, encoded):
            if ids != base[r] + list(prefix):
                raise DataError(f"a label's first {len(prefix)} token(s) after prompt {r + 1} tokenize differently "
                                f"on their own than inside the label for tokenizer {name!r}", field="labels")
    # One engine call per group of nodes with the same children (in practice one per trie node).
    groups: dict[tuple[tuple[int, str], ...], list[tuple[int, tuple[int, ...]]]] = {}
    for key, kids in children.items():
        groups.setdefault(tuple(sorted(kids.items())), []).append(key)
    step: dict[tuple[int, tuple[int, ...]], dict[int, float]] = {}
    for kids, keys in groups.items():
        ids, options = [k for k, _ in kids], [o for _, o in kids]
        scores = scorer.score_next_token([nodes[key] for key in keys], options, adapter, log_probs=True)
        if list(scorer.option_ids) != ids:
            raise DataError(f"options {options!r} were scored as tokens {scorer.option_ids}, not the label tokens "
                            f"{ids} for tokenizer {name!r}", field="labels")
        for key, row in zip(keys, np.asarray(scores, dtype=np.float64)):
            step[key] = dict(zip(ids, row.tolist()))
    out = np.zeros((len(texts), len(labels)))
    for (r, j), (cont, _) in paths.items():
        out[r, j] = sum(step[(r, cont[:k])][cont[k]] for k in range(len(cont)))
    row_of = {text: r for r, text in enumerate(texts)}
    return out[[row_of[p] for p in prompts]]
