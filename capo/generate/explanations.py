"""Generation at scale: one record per (item, annotator) from per-annotator LoRA explainers on one base model (or
`num_samples` records per (item, annotator), `sample` 0..n-1, when sampling at `temperature` > 0).

Output folder layout::

    run_config.json          the run signature: arguments, model / adapter / data file content hashes
    shards/shard-00000.jsonl one file per shard of `shard_size` records, written atomically when complete
    generations.jsonl        all shards merged in unit order, once every shard exists
    run_manifest.json        package versions, git commit, data hashes; the summary names any adapter used without
                             a run manifest (`allow_unchecked_adapters`: its training items were not checked)

Units (item, annotator, sample) are laid out in a fixed order (items in input order, annotators in the given order,
samples 0..num_samples-1) and run by the one sharded engine, `capo.runner`: shard k belongs to process
k % num_processes (`accelerate launch` runs several), so the merged file is the same whatever the number of
processes. A killed run restarted with the same arguments skips the shards that exist and redoes only the unfinished
ones, with identical records: greedy decoding (temperature 0, the default) is deterministic, and sampling draws from
a generator seeded per shard (and adapter) from `seed` and the shard's first unit, so a shard's samples do not depend
on which process runs it or whether the run was interrupted (they do depend on shard_size and batch_size, which the
run signature holds). A generation that does not parse as `Label: ...\\nExplanation: ...` is kept with
`parsed: false`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from capo.data.prompts import parse_response, prompt_messages, render_chat
from capo.data.schema import Annotation, Item, check_annotator
from capo.errors import DataError
from capo.generate.backends import BACKENDS
from capo.generate.backends.base import Backend, check_dtype
from capo.precision import resolve_dtype
from capo.runner import ShardedRun, check_positive, fingerprint

MERGED = "generations.jsonl"


@dataclass(frozen=True)
class Unit:
    item: Item
    annotator: str  # the record's annotator name (the adapter's name, a prompted target, or "base")
    adapter: str | None  # adapter name registered with the backend; None = base model
    target: str | None = None  # prompting baselines: the annotator the base model is prompted to write as
    examples: tuple[tuple[Item, Annotation], ...] = ()  # few-shot worked examples from the target's training history
    conditioned: bool = False  # a conditioned explainer (one adapter for all annotators): the target's id in the prompt
    sample: int = 0  # which of the (item, annotator)'s sampled responses (0 for greedy decoding)

    @property
    def key(self) -> str:
        return f"{self.item.id}\t{self.annotator}\t{self.sample}"


def plan_units(items: Sequence[Item], annotators: Mapping[str, str | None], *,
               examples: Callable[[Item, str], Sequence[tuple[Item, Annotation]]] | None = None,
               targets: Sequence[str] = (), conditioned: bool = False, samples: int = 1) -> list[Unit]:
    """Every (item, annotator, sample) in a fixed order (samples innermost, 0..samples-1); item ids must be unique
    (a record is keyed by id, annotator and sample). A name in `targets` is a prompting baseline: the base model
    prompted as that annotator, with `examples(item, target)` as its worked examples; with `conditioned`, a
    conditioned adapter prompted with the target's id."""
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise DataError("duplicate item id: records could not be told apart (use one LeWiDi split per run)",
                            item=item.id, field="id")
        seen.add(item.id)
    units = [Unit(item, name, adapter, target=name if name in targets else None,
                  examples=tuple(examples(item, name)) if examples and name in targets else (),
                  conditioned=conditioned and name in targets)
             for item in items for name, adapter in annotators.items()]
    return [dataclasses.replace(unit, sample=k) if k else unit for unit in units for k in range(samples)]


def few_shot_planner(train_items: Sequence[Item], k: int, seed: int):
    """`examples(item, target)` for `plan_units`: k of the target's valid training responses (the validity SFT
    trains on), drawn per (target, item) from a generator of their own, so the choice does not depend on which other
    items or targets a run has."""
    from capo.data.splits import few_shot_examples, few_shot_rng, history
    from capo.data.validity import predicate
    from capo.train.pairs import DEFAULT_VALIDITY

    valid = predicate(DEFAULT_VALIDITY)
    histories: dict[str, list[tuple[Item, Annotation]]] = {}

    def examples(item: Item, target: str) -> list[tuple[Item, Annotation]]:
        if target not in histories:
            histories[target] = history(train_items, target, valid=valid)
        return few_shot_examples(histories[target], item, k, few_shot_rng(seed, target, item.id))

    return examples


def fit_examples(unit: Unit, tokenizer, max_prompt_tokens: int | None, max_new_tokens: int,
                 response_prefix: str = "") -> Unit:
    """The unit with as many of its worked examples (in order) as fit `max_prompt_tokens` with the answer."""
    if not unit.examples or max_prompt_tokens is None:
        return unit

    def fits(candidate: Unit) -> bool:
        prompt = tokenizer(render_unit_prompt(tokenizer, candidate, response_prefix),
                           add_special_tokens=False)["input_ids"]
        return len(prompt) + max_new_tokens <= max_prompt_tokens

    while unit.examples and not fits(unit):
        unit = dataclasses.replace(unit, examples=unit.examples[:-1])
    return unit


def record_key(record: dict) -> str:
    """The unit key a generation record answers (`Unit.key`)."""
    return f"{record.get('id')}\t{record.get('annotator')}\t{record.get('sample')}"


def sampling_seed(seed: int, *parts: object) -> int:
    """A seed in [0, 2**31) for one `generate` call, from the run's `seed` and what identifies the call (the shard's
    first unit key, the adapter): the same for a shard whichever process runs it, and before or after a kill."""
    digest = hashlib.sha256(json.dumps([seed, *parts], default=str).encode()).digest()
    return int.from_bytes(digest[:8], "big") % (1 << 31)


def render_unit_prompt(tokenizer, unit: Unit, response_prefix: str = "") -> str:
    """The explainer's prompt for a unit, as in SFT/CAPO training (`capo.data.prompts.prompt_messages`), with the
    unit's worked examples (prompting baselines) or none, and the target's id for a conditioned explainer; then the
    start of the answer the model continues (`response_prefix`, e.g. "Label:")."""
    messages = prompt_messages(unit.item, unit.examples, unit.target if unit.conditioned else None)
    return render_chat(tokenizer, messages) + response_prefix


def explain_units(
    backend: Backend, units: Sequence[Unit], *, adapter_ids: Mapping[str, str], max_new_tokens: int,
    prompt: Callable[[Unit], str], response_prefix: str = "", stop: Sequence[str] = (), temperature: float = 0.0,
    top_p: float = 1.0, seed: int = 0,
) -> list[dict]:
    """Generate for one shard: one `generate` call per adapter, records in unit order. Greedy (temperature 0): all
    its distinct prompts batched (greedy decoding gives a repeated prompt the same answer, e.g. zero-shot prompting
    for several targets). Sampling: one row per unit (each sample, and each target sharing a prompt, is its own
    draw), seeded by `sampling_seed(seed, first unit key, adapter)`. `prompt` ends with `response_prefix`, which
    each record's `raw` text starts with; decoding ends before `stop`."""
    by_adapter: dict[str | None, list[int]] = {}
    for position, unit in enumerate(units):
        by_adapter.setdefault(unit.adapter, []).append(position)
    records: list[dict | None] = [None] * len(units)
    for adapter, positions in by_adapter.items():
        texts = [prompt(units[p]) for p in positions]
        if temperature:
            generations = backend.generate(texts, adapter=adapter, max_new_tokens=max_new_tokens, stop=stop,
                                           temperature=temperature, top_p=top_p,
                                           seed=sampling_seed(seed, units[positions[0]].key, adapter))
        else:
            distinct = list(dict.fromkeys(texts))
            answers = dict(zip(distinct, backend.generate(distinct, adapter=adapter, max_new_tokens=max_new_tokens,
                                                          stop=stop), strict=True))
            generations = [answers[text] for text in texts]
        for position, generation in zip(positions, generations, strict=True):
            unit = units[position]
            raw = response_prefix + generation.text
            parsed = parse_response(raw, unit.item.task)
            records[position] = {
                "id": unit.item.id,
                "annotator": unit.annotator,
                "sample": unit.sample,
                "task": unit.item.task,
                "label": parsed[0] if parsed else None,
                "explanation": parsed[1] if parsed else None,
                "parsed": parsed is not None,
                "raw": raw,
                "model": backend.model_id,
                "adapter": adapter_ids.get(unit.adapter),
                "prompt_tokens": generation.prompt_tokens,
                "generated_tokens": generation.generated_tokens,
            }
            if unit.target is not None:  # a prompting baseline or a conditioned explainer: eval/imitation.py's target
                records[position].update(target=unit.target, few_shot_ids=[i.id for i, _ in unit.examples])
                if unit.conditioned:
                    records[position]["conditioned"] = True
    return records  # type: ignore[return-value]


class Progress:
    """A tqdm bar over this process's records, with items/s and generated tokens/s."""

    def __init__(self, total: int, annotators: int, position: int = 0, disable: bool = False) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, unit="rec", position=position, disable=disable, dynamic_ncols=True)
        self.annotators = max(annotators, 1)
        self.start = time.perf_counter()
        self.new_records = 0
        self.tokens = 0

    def __call__(self, done: int, records: list[dict]) -> None:
        self.new_records += len(records)
        self.tokens += sum(r["generated_tokens"] for r in records)
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        self.bar.update(done)
        self.bar.set_postfix({"items/s": f"{self.new_records / self.annotators / elapsed:.2f}",
                              "tok/s": f"{self.tokens / elapsed:.0f}"}, refresh=False)

    def close(self) -> dict:
        self.bar.close()
        elapsed = time.perf_counter() - self.start
        return {"records": self.new_records, "generated_tokens": self.tokens, "seconds": round(elapsed, 2),
                "records_per_s": round(self.new_records / elapsed, 3) if elapsed else None,
                "tokens_per_s": round(self.tokens / elapsed, 1) if elapsed else None}


def parse_adapters(specs: Sequence[str]) -> dict[str, str]:
    """`["A1=path/or/hub-id", ...]` -> {"A1": "path/or/hub-id"}; names unique."""
    from capo.cli import named_values  # imports TRL's parser: only where adapters are named

    return named_values(specs, "adapters", what="adapter name")


def check_generation_options(args) -> None:
    """The value checks every generation job's arguments share (a bad value never reaches the output folder)."""
    check_positive(args, "batch_size", "max_new_tokens", "shard_size", "tensor_parallel_size", "limit",
                   optional=("limit",))
    if args.backend not in BACKENDS:
        raise DataError(f"unknown backend {args.backend!r} (valid: {', '.join(BACKENDS)})", field="backend")
    if not str(args.output_dir).strip():
        raise DataError("output_dir is required", field="output_dir")


def check_sampling_options(args) -> None:
    """temperature >= 0 (0: greedy), 0 < top_p <= 1, num_samples >= 1; more than one sample, or a top_p below 1,
    only when sampling (greedy decoding would repeat the same text / ignore top_p)."""
    check_positive(args, "num_samples")
    number = lambda value: not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
    if not number(args.temperature) or args.temperature < 0:
        raise DataError(f"must be a number of at least 0 (0: greedy), got {args.temperature!r}", field="temperature")
    if not number(args.top_p) or not 0 < args.top_p <= 1:
        raise DataError(f"must be a number in (0, 1], got {args.top_p!r}", field="top_p")
    if not args.temperature and args.num_samples > 1:
        raise DataError(f"num_samples {args.num_samples} needs temperature > 0 (greedy decoding gives every sample "
                        "the same text)", field="num_samples")
    if not args.temperature and args.top_p < 1:
        raise DataError(f"top_p {args.top_p} needs temperature > 0 (greedy decoding ignores it)", field="top_p")
    if isinstance(args.seed, bool) or not isinstance(args.seed, int):
        raise DataError(f"must be a whole number, got {args.seed!r}", field="seed")


@dataclass
class GenerateArguments:
    """Arguments of `recipes/generate.py` (a `TrlParser` dataclass; YAML config keys have the same names)."""

    model: str = "models/corpus-lm"  # base model: hub id or local folder
    dataset: str = "varierr"  # a `capo.data.registry.load_items` name or path
    output_dir: str = "runs/generate"
    adapters: list[str] | None = None  # annotator explainers as NAME=PATH (hub id or folder), on the one base model
    base: bool = False  # also generate with the base model (annotator "base"); implied when there is nothing else
    targets: list[str] | None = None  # prompting baselines: the base model prompted as each of these annotators
    conditioned: bool = False  # with targets and one adapter trained with annotator 'all': that adapter writes as
    # each target, the target's id in its prompt (records are named by target)
    few_shot: int = 0  # with targets: k worked examples from each target's training history (0 = zero-shot)
    few_shot_seed: int = 0
    max_prompt_tokens: int | None = None  # with few_shot: fewer examples where a prompt and its answer would not
    # fit (default: the tokenizer's model_max_length); records list the examples they showed (few_shot_ids)
    response_prefix: str = ""  # the start of every answer, written after the prompt for the model to continue
    # (e.g. "Label:": small instruction models prompted zero- or few-shot ignore the format otherwise); raw keeps it
    stop: list[str] | None = None  # decoding ends before the first of these strings (e.g. a blank line, where a
    # few-shot prompt's next worked example would begin)
    split: str | None = "test"  # held-out items: this part of the adapters' split (`select_items`); None = all
    split_seed: int = 0
    limit: int | None = None  # only the first N items (after the split)
    backend: str = "hf"  # hf | vllm
    dtype: str = "auto"
    batch_size: int = 16
    max_new_tokens: int = 128
    shard_size: int = 32  # records per shard: the most work a kill can lose
    tensor_parallel_size: int = 1  # vLLM only
    allow_unchecked_adapters: bool = False  # use adapters without a run manifest (a hub adapter, a copied folder),
    # whose training items cannot be checked against the items (refused otherwise); the summary and run_manifest.json
    # name them (unchecked_adapters)
    temperature: float = field(default=0.0, metadata={"help": (
        "0 (the default): greedy decoding, one record per (item, annotator); above 0: sample at this temperature "
        "(transformers' / vLLM's own sampling, no top-k cut)")})
    num_samples: int = field(default=1, metadata={"help": (
        "responses per (item, annotator), each a record with its `sample` index 0..num_samples-1; above 1 needs "
        "temperature > 0")})
    top_p: float = field(default=1.0, metadata={"help": (
        "nucleus sampling: draw from the smallest set of tokens whose probability reaches top_p (1: no cut); below "
        "1 needs temperature > 0")})
    seed: int = field(default=0, metadata={"help": (
        "sampling seed: each shard's draws are seeded from it and the shard's first unit, so a resumed run writes "
        "the records an uninterrupted one writes (greedy records do not depend on it; a resume still needs the same)")})

    def __post_init__(self) -> None:
        # Every value check happens here, while parsing: a bad value never reaches the output folder.
        check_generation_options(self)
        check_positive(self, "max_prompt_tokens", optional=("max_prompt_tokens",))
        check_sampling_options(self)
        if self.few_shot < 0:
            raise DataError(f"few_shot must be 0 or more, got {self.few_shot}", field="few_shot")
        self.annotators()

    def annotators(self) -> dict[str, str | None]:
        """Record annotator name -> adapter name (None: the base model), in record order."""
        adapters = parse_adapters(self.adapters or [])
        annotators: dict[str, str | None] = {name: name for name in adapters}
        targets = list(dict.fromkeys(self.targets or []))
        if self.conditioned:
            if len(adapters) != 1 or not targets:
                raise DataError("conditioned needs exactly one adapter (trained with annotator 'all') and the targets "
                                "it writes as", field="conditioned")
            annotators = {}  # records are named by target
        elif targets and adapters:
            raise DataError("targets (prompting baselines on the base model) and adapters go in separate runs: "
                            "their records would share annotator names", field="targets")
        target_adapter = next(iter(adapters)) if self.conditioned else None  # None: the base model
        for target in targets:
            check_annotator(target)
            annotators[target] = target_adapter
        if self.few_shot and not targets:
            raise DataError("few_shot needs targets: whose training history the examples come from",
                            field="few_shot")
        if self.base or not annotators:
            if "base" in annotators:
                raise DataError("'base' names the base model; give the adapter another name", field="adapters")
            annotators["base"] = None
        return annotators


def select_items(dataset: str, split: str | None, split_seed: int = 0, limit: int | None = None,
                 adapters: Mapping[str, str] | None = None, log: Callable[[str], None] = print, *,
                 allow_unchecked: bool = False) -> list[Item]:
    """The items of `split` (None = all) that none of `adapters` (name -> folder) trained on.

    An item's split is the one it has in the training data recorded in each adapter's run manifest (ids are shared
    across data sets), else the data set's own split as training cuts it (`capo.data.datasets.load_splits`: a
    LeWiDi file's own split, otherwise by `split_seed`); an item an adapter trained on is refused
    (`capo.data.heldout.check_heldout`), and so is an adapter without a run manifest unless `allow_unchecked`."""
    from capo.data.datasets import load_splits
    from capo.data.heldout import check_heldout, select_heldout

    items = select_heldout(load_splits(dataset, split_seed), split, adapters)
    if limit is not None:
        if limit < 1:
            raise DataError(f"limit must be at least 1, got {limit}", field="limit")
        items = items[:limit]
    if not items:
        raise DataError("no items to generate for", path=dataset, field="split")
    check_heldout(items, adapters or {}, log=log, allow_unchecked=allow_unchecked)
    return items


def _context_limit(tokenizer) -> int | None:
    """The tokenizer's model_max_length where it is a real limit (transformers' "unset" is a huge number)."""
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and 0 < limit < 1_000_000 else None


def run_generation(args: GenerateArguments, *, process_index: int | None = None,
                   num_processes: int | None = None) -> dict:
    """The whole job for this process; the main process merges the shards and writes the manifest.

    `process_index` / `num_processes` default to accelerate's (`PartialState`); passing them simulates one process
    of a multi-process run.
    """
    import torch
    from accelerate import PartialState

    from capo.data.heldout import unchecked_adapters
    from capo.generate.backends import backend_options, load_backend
    from capo.manifest import write_manifest

    # cpu=True lets several CPU processes (torchrun / accelerate launch without GPUs) form a gloo group.
    state = PartialState(cpu=not torch.cuda.is_available())
    index = state.process_index if process_index is None else process_index
    world = state.num_processes if num_processes is None else num_processes
    if args.backend == "vllm" and world > 1:
        raise DataError("the vllm backend runs in one process (use tensor_parallel_size for more GPUs)",
                        field="backend")
    adapters = parse_adapters(args.adapters or [])
    items = select_items(args.dataset, args.split, args.split_seed, args.limit, adapters,
                         log=lambda msg: print(msg, flush=True) if index == 0 else None,
                         allow_unchecked=args.allow_unchecked_adapters)
    unchecked = unchecked_adapters(adapters, allow=True, log=lambda _: None)  # allowed above; recorded below
    annotators = args.annotators()
    examples = None
    if args.few_shot:
        from capo.data.datasets import load_splits

        examples = few_shot_planner(load_splits(args.dataset, args.split_seed).items("train"), args.few_shot,
                                    args.few_shot_seed)
    units = plan_units(items, annotators, examples=examples, targets=args.targets or (), conditioned=args.conditioned,
                       samples=args.num_samples)
    args.dtype = resolve_dtype(check_dtype(args.dtype), "cuda" if args.backend == "vllm" else None)  # auto: recorded
    signature = {key: getattr(args, key) for key in ("split", "split_seed", "limit", "backend", "dtype", "batch_size",
                                                        "max_new_tokens", "tensor_parallel_size", "targets",
                                                        "few_shot", "few_shot_seed", "max_prompt_tokens",
                                                        "temperature", "num_samples", "top_p", "seed")}
    # New keys only where used: earlier runs' signatures stay valid.
    if args.conditioned:
        signature["conditioned"] = True
    if args.response_prefix:
        signature["response_prefix"] = args.response_prefix
    if args.stop:
        signature["stop"] = list(args.stop)
    # Content, not just names: a data file edited or a model / adapter replaced in place must not mix into a run.
    signature.update(model=fingerprint(args.model), dataset=fingerprint(args.dataset),
                     annotators={name: fingerprint(adapters[adapter]) if adapter else None
                                 for name, adapter in annotators.items()})
    run = ShardedRun(args.output_dir, units, shard_size=args.shard_size, signature=signature, record_key=record_key,
                     code=(__name__,))
    run.check()  # before loading a model: fail fast
    main = index == 0
    if main:
        samples = f" x {args.num_samples} samples" if args.num_samples > 1 else ""
        print(f"{len(items)} items x {len(annotators)} annotators{samples} = {len(units)} records in {run.n_shards} "
              f"shards; {len(run.done())} of {run.n_shards} shards already done", flush=True)
    options = backend_options(args.backend, args.dtype, args.batch_size, args.tensor_parallel_size)
    backend = load_backend(args.backend, args.model, adapters, **options)
    mine = sum(len(run.shard(k)) for k in run.shards_of(index, world))
    progress = Progress(mine, len(annotators) * args.num_samples, position=index, disable=not main)
    limit = args.max_prompt_tokens or _context_limit(backend.tokenizer)
    prefix, stop = args.response_prefix, args.stop or ()
    fit = lambda chunk: [fit_examples(unit, backend.tokenizer, limit, args.max_new_tokens, prefix) for unit in chunk]
    run.run(lambda chunk: explain_units(backend, fit(chunk), adapter_ids=adapters, max_new_tokens=args.max_new_tokens,
                                        prompt=lambda unit: render_unit_prompt(backend.tokenizer, unit, prefix),
                                        response_prefix=prefix, stop=stop, temperature=args.temperature,
                                        top_p=args.top_p, seed=args.seed),
            process_index=index, num_processes=world, progress=progress)
    throughput = progress.close()
    if process_index is None:
        state.wait_for_everyone()
    summary = {"records": len(units), "shards": run.n_shards, "this_process": throughput, "merged": None,
               "unchecked_adapters": unchecked}  # adapters used without a run manifest: held-out-ness unverified
    if main:
        records = run.merge(into=MERGED)
        if records is not None:
            summary.update(merged=str(run.output_dir / MERGED), unparsed=sum(not r["parsed"] for r in records))
            if args.few_shot:  # say plainly where the context forced fewer examples than asked for
                shown = [len(r["few_shot_ids"]) for r in records if "few_shot_ids" in r]
                summary.update(few_shot_asked=args.few_shot, few_shot_shown_min=min(shown, default=0),
                               few_shot_reduced=sum(k < args.few_shot for k in shown))
            write_manifest(run.output_dir, config=args, extra={"summary": summary})
    return summary
