"""Model explanations (Chen et al., ACL 2025 Findings): LLM-generated explanations as stand-ins for human ones.

Per item and per label, an LLM is asked to list all possible explanations why the statement is true / undetermined
/ false given the context; the generated list is parsed into a *pool* (label -> explanations in generation order).
Explanation sets are then built from the pools:

- label-free: one explanation per label, for all three labels;
- label-guided: one explanation per label occurrence of a label multiset - VariErr's 4 labels (in the positions of
  the item's annotations) or MNLI's 5 (sorted e, n, c).

`first` takes each label's explanations in generation order, `longest` by decreasing character count (ties keep
generation order). When a label is needed more often than it has explanations, the extra slots repeat the label's
top-ranked explanation: the released files show `a b a a` for four slots over two explanations, not `a b a b`.
The resulting structures are those `capo.data.formats.mjd_files.load_model_explanations` returns for the released files, and
`released_row` writes files in the released format.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from capo.data.schema import NLI, Item
from capo.errors import DataError
from capo.generate.backends.base import check_dtype
from capo.generate.explanations import check_generation_options
from capo.precision import resolve_dtype

Strategy = Literal["first", "longest"]
STRATEGIES: tuple[str, ...] = ("first", "longest")
MULTISETS: tuple[str, ...] = ("varierr", "mnli")
Pool = Mapping[str, Sequence[str]]  # label -> explanations in generation order
Pairs = list[tuple[str, str]]  # [(explanation, label), ...] as the loaders return them

LABEL_TRUTH = {"entailment": "true", "neutral": "undetermined (neither true nor false)", "contradiction": "false"}
# The released files' list key for each set, and their file names (Llama3 spells one `MNLI-label-Guided-longest`).
SET_KEYS = {"label-free": "machine_comments", "varierr": "machine_replaced_comments",
            "mnli": "machine_replaced_comments"}
SET_FILES = {"label-free": "Label-Free-{strategy}.json", "varierr": "VariErr-Label-Guided-{strategy}.json",
             "mnli": "MNLI-Label-Guided-{strategy}.json"}


def explanation_prompt(item: Item, label: str) -> str:
    """The user message asking for every possible explanation of one label (NLI items only)."""
    if item.task != "nli":
        raise DataError("model explanations are defined for NLI items only", item=item.id, field="task")
    label = NLI.normalise(label)
    return (
        "You are given a context and a statement. List every possible explanation for why the statement is "
        f"{LABEL_TRUTH[label]} given the context. Write each explanation as one sentence on its own numbered line "
        "(1., 2., ...), with no introduction and no conclusion.\n\n"
        f"Context: {item.inputs['premise']}\nStatement: {item.inputs['hypothesis']}"
    )


def explanation_messages(item: Item, label: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": explanation_prompt(item, label)}]


# A list item: "1.", "1)", "(1)", "-", "*", "•", optionally followed by a bold heading like "**Scope:**".
_MARKER = re.compile(r"^\s*(?:\(?\d{1,3}[.):]|[-*•+])\s+(?P<text>\S.*)$")
_BOLD = re.compile(r"\*\*(.+?)\*\*")


def _clean(text: str) -> str:
    return " ".join(_BOLD.sub(r"\1", text).split())


def parse_explanation_list(text: str) -> list[str]:
    """The explanations of a generated numbered or bulleted list, in order.

    An item runs until the next marker; lines right below it (no blank line in between) continue it. Text before
    the first marker (an introduction) and unmarked paragraphs after a blank line (a conclusion) are dropped. A
    reply without any marker counts as one explanation, unless it is only an introduction ending in ':'.
    """
    items: list[str] = []
    current: list[str] | None = None
    after_blank = False
    for line in text.splitlines():
        if not line.strip():
            after_blank = True
            continue
        match = _MARKER.match(line)
        if match:
            if current:
                items.append(_clean(" ".join(current)))
            current, after_blank = [match["text"]], False
        elif current is not None and not after_blank:
            current.append(line.strip())
        elif current is not None:  # unmarked text after a blank line ends the list item
            items.append(_clean(" ".join(current)))
            current = None
    if current:
        items.append(_clean(" ".join(current)))
    items = [item for item in items if item]
    if not items and not any(_MARKER.match(line) for line in text.splitlines()):
        whole = _clean(text)
        if whole and not whole.endswith(":"):
            items = [whole]
    return items


def rank(explanations: Sequence[str], strategy: Strategy) -> list[str]:
    """`first`: generation order; `longest`: by decreasing character count, ties in generation order."""
    if strategy == "first":
        return list(explanations)
    if strategy == "longest":
        return sorted(explanations, key=len, reverse=True)  # sorted() is stable: ties keep generation order
    raise DataError(f"unknown selection {strategy!r} (valid: {', '.join(STRATEGIES)})", field="strategy")


def select(pool: Pool, labels: Sequence[str], strategy: Strategy, item_id: str | None = None) -> Pairs:
    """One explanation per position of `labels`: the j-th occurrence of a label takes its j-th ranked explanation,
    or its top-ranked one when it has fewer than j + 1."""
    ranked = {label: rank(texts, strategy) for label, texts in pool.items()}
    used: dict[str, int] = {}
    pairs = []
    for label in labels:
        label = NLI.normalise(label)
        choices = ranked.get(label) or []
        if not choices:
            raise DataError(f"no explanation for label {label!r} to select from", item=item_id, field="pool")
        j = used.get(label, 0)
        used[label] = j + 1
        pairs.append((choices[j] if j < len(choices) else choices[0], label))
    return pairs


def label_free(pool: Pool, strategy: Strategy, order: Sequence[str] = NLI.labels, item_id: str | None = None) -> Pairs:
    """One explanation for each label, in `order`."""
    return select(pool, order, strategy, item_id)


def label_multiset(item: Item, source: str) -> list[str]:
    """`varierr`: the labels of the item's annotations, in their order; `mnli`: the 5 MNLI labels sorted e, n, c."""
    if source == "varierr":
        labels = [annotation.label for annotation in item.annotations]
        if not labels:
            raise DataError("no annotations to take the VariErr label multiset from", item=item.id, field="annotations")
        return labels
    if source == "mnli":
        counts = item.meta.get("mnli_counts")
        if not counts or len(counts) != len(NLI):
            raise DataError("no MNLI label counts (load the 341-item set: capo.data.formats.mjd_files.load_nli341)", item=item.id,
                            field="mnli labels")
        return [label for label, count in zip(NLI.labels, counts, strict=True) for _ in range(int(count))]
    raise DataError(f"unknown label multiset {source!r} (valid: {', '.join(MULTISETS)})", field="multiset")


def explanation_sets(item: Item, pool: Pool, label_free_order: Sequence[str] = NLI.labels,
                     kinds: Sequence[str] = ("label-free", *MULTISETS)) -> dict[str, Pairs]:
    """The released sets of `kinds` (all six by default) for one item, keyed like the released file names
    (`Label-Free-first`, ...)."""
    sets = {}
    for kind in kinds:
        for strategy in STRATEGIES:
            if kind == "label-free":
                sets[set_name(kind, strategy)] = label_free(pool, strategy, label_free_order, item.id)
            else:
                sets[set_name(kind, strategy)] = select(pool, label_multiset(item, kind), strategy, item.id)
    return sets


def set_name(kind: str, strategy: str) -> str:
    return SET_FILES[kind].format(strategy=strategy).removesuffix(".json")


def released_row(item: Item, pairs: Pairs, kind: str) -> dict:
    """One line of a released-format file (`capo.data.formats.mjd_files.load_model_explanations` reads it back)."""
    return {
        "premise": item.inputs["premise"],
        "hypothesis": item.inputs["hypothesis"],
        SET_KEYS[kind]: [[text, NLI.short[NLI.index(label)]] for text, label in pairs],
    }


# --- generating the pools with an LLM -------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelUnit:
    """One generation: every explanation of one label for one item."""

    item: Item
    label: str

    @property
    def key(self) -> str:
        return f"{self.item.id}\t{self.label}"


@dataclass
class ModelExplanationArguments:
    """Arguments of `recipes/model_explanations.py` (a `TrlParser` dataclass; YAML keys have the same names)."""

    model: str = "models/corpus-lm"  # hub id or local folder of an instruction-following LLM
    dataset: str = "nli341"  # NLI items; nli341 has the VariErr and MNLI label multisets for label-guided sets
    output_dir: str = "runs/model_explanations"
    limit: int | None = None  # only the first N items
    backend: str = "hf"  # hf | vllm
    dtype: str = "auto"
    batch_size: int = 16
    max_new_tokens: int = 256
    shard_size: int = 48  # generations per shard (3 per item)
    label_free_order: list[str] = field(default_factory=lambda: list(NLI.labels))
    tensor_parallel_size: int = 1  # vLLM only

    def __post_init__(self) -> None:
        # Every value check happens here, while parsing: a bad value never reaches the output folder.
        check_generation_options(self)
        try:
            order = [NLI.normalise(label) for label in self.label_free_order]
        except ValueError as err:
            raise DataError(str(err), field="label_free_order") from None
        if sorted(order) != sorted(NLI.labels):
            raise DataError(f"must name each of {', '.join(NLI.labels)} once, got {self.label_free_order}",
                            field="label_free_order")
        self.label_free_order = order


def _label_key(record: dict) -> str:
    return f"{record.get('id')}\t{record.get('label')}"


def run_model_explanations(args: ModelExplanationArguments) -> dict:
    """Generate every label's explanation list for every item (sharded, resumable), then write the six released-
    format sets (`Label-Free-first.json`, ...) that `capo.data.formats.mjd_files.load_model_explanations` reads."""
    from capo.data.prompts import render_chat
    from capo.data.registry import load_items
    from capo.generate.backends import backend_options, load_backend
    from capo.generate.explanations import MERGED, Progress
    from capo.io import write_jsonl
    from capo.manifest import write_manifest
    from capo.runner import ShardedRun, fingerprint

    items = load_items(args.dataset)
    items = [item for item in items if item.task == "nli"][: args.limit]
    if not items:
        raise DataError("no NLI items to explain", path=args.dataset, field="dataset")
    units = [LabelUnit(item, label) for item in items for label in NLI.labels]
    args.dtype = resolve_dtype(check_dtype(args.dtype), "cuda" if args.backend == "vllm" else None)  # auto: recorded
    signature = {key: getattr(args, key) for key in ("limit", "backend", "dtype", "batch_size", "max_new_tokens",
                                                        "tensor_parallel_size", "label_free_order")}
    signature.update(model=fingerprint(args.model), dataset=fingerprint(args.dataset))
    run = ShardedRun(args.output_dir, units, shard_size=args.shard_size, signature=signature, record_key=_label_key,
                     code=(__name__,))
    run.check()  # before loading a model: fail fast
    options = backend_options(args.backend, args.dtype, args.batch_size, args.tensor_parallel_size)
    backend = load_backend(args.backend, args.model, None, **options)
    render = lambda unit: render_chat(backend.tokenizer, explanation_messages(unit.item, unit.label))

    def work(chunk: Sequence[LabelUnit]) -> list[dict]:
        generations = backend.generate([render(u) for u in chunk], max_new_tokens=args.max_new_tokens)
        return [
            {"id": u.item.id, "label": u.label, "explanations": parse_explanation_list(g.text), "raw": g.text,
             "model": backend.model_id, "prompt_tokens": g.prompt_tokens, "generated_tokens": g.generated_tokens}
            for u, g in zip(chunk, generations, strict=True)
        ]

    progress = Progress(len(units), len(NLI.labels))
    run.run(work, progress=progress)
    throughput = progress.close()
    records = run.merge(into=MERGED)
    pools: dict[str, dict[str, list[str]]] = {}
    for record in records:
        pools.setdefault(record["id"], {})[record["label"]] = record["explanations"]
    # A label with no parsable explanation leaves its item out of the sets (listed, never silently).
    complete = [item for item in items if all(pools[item.id].get(label) for label in NLI.labels)]
    kinds = ["label-free"]
    if all(item.annotations for item in complete):
        kinds.append("varierr")
    if all(item.meta.get("mnli_counts") for item in complete):
        kinds.append("mnli")
    rows: dict[str, list[dict]] = {set_name(kind, s): [] for kind in kinds for s in STRATEGIES}
    kind_of = {set_name(kind, s): kind for kind in kinds for s in STRATEGIES}
    for item in complete:
        for name, pairs in explanation_sets(item, pools[item.id], args.label_free_order, kinds).items():
            rows[name].append(released_row(item, pairs, kind_of[name]))
    for name, set_rows in rows.items():
        write_jsonl(run.output_dir / f"{name}.json", set_rows)
    summary = {
        "items": len(items), "generations": len(units), "throughput": throughput,
        "sets": [f"{name}.json" for name in rows],
        "items_left_out": sorted({item.id for item in items} - {item.id for item in complete}),
        "explanations_per_label": round(sum(len(v) for p in pools.values() for v in p.values()) / len(units), 2),
    }
    write_manifest(run.output_dir, config=args, extra={"summary": summary})
    return summary
