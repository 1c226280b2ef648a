"""Generation at scale: one record per (item, annotator) from per-annotator LoRA explainers on one base model.

Output folder layout::

    run_config.json          the arguments that define the records (a restart must match them)
    shards/shard-00000.jsonl one file per shard of `shard_size` records, written atomically when complete
    generations.jsonl        all shards merged in unit order, once every shard exists
    run_manifest.json        package versions, git commit, data hashes

Units (item, annotator) are laid out in a fixed order (items in input order, annotators in the given order) and cut
into shards; shard k belongs to process k % num_processes (`accelerate launch` runs several), so the merged file is
the same whatever the number of processes. A killed run restarted with the same arguments skips the shards that
exist and redoes only the unfinished ones (greedy decoding: identical records). A generation that does not parse
as `Label: ...\\nExplanation: ...` is kept with `parsed: false`, never dropped.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from capo.errors import DataError
from capo.generate.backends.base import Backend
from capo.io import atomic_write_text, check_run_signature, iter_jsonl
from capo.data.prompts import parse_response, prompt_messages, render_chat
from capo.data.schema import Item

RUN_CONFIG = "run_config.json"
MERGED = "generations.jsonl"
SHARD_DIR = "shards"
# Test hook: SIGKILL this process right after writing this many shards (a real, uncatchable kill at a known point).
KILL_AFTER_ENV = "CAPO_KILL_AFTER_SHARDS"


class Keyed(Protocol):
    """A unit of work: one output record, identified by `key`."""

    item: Item

    @property
    def key(self) -> str: ...


@dataclass(frozen=True)
class Unit:
    item: Item
    annotator: str  # the record's annotator name (the adapter's name; "base" for the base model)
    adapter: str | None  # adapter name registered with the backend; None = base model

    @property
    def key(self) -> str:
        return f"{self.item.id}\t{self.annotator}"


def plan_units(items: Sequence[Item], annotators: Mapping[str, str | None]) -> list[Unit]:
    """Every (item, annotator) in a fixed order; item ids must be unique (a record is keyed by id and annotator)."""
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise DataError("duplicate item id: records could not be told apart (use one LeWiDi split per run)",
                            item=item.id, field="id")
        seen.add(item.id)
    return [Unit(item, name, adapter) for item in items for name, adapter in annotators.items()]


def shard_path(output_dir: str | Path, index: int) -> Path:
    return Path(output_dir) / SHARD_DIR / f"shard-{index:05d}.jsonl"


def record_key(record: dict) -> str:
    """The unit key a generation record answers (`Unit.key`)."""
    return f"{record.get('id')}\t{record.get('annotator')}"


def _read_shard(path: Path, expected_keys: list[str], key: Callable[[dict], str] = record_key) -> list[dict]:
    records = [row for _, row in iter_jsonl(path)]
    if [key(r) for r in records] != expected_keys:
        raise DataError("shard does not hold the records this run expects (was the output_dir reused?)",
                        path=str(path))
    return records


def run_sharded(
    units: Sequence[Keyed],
    output_dir: str | Path,
    work: Callable[[Sequence[Keyed]], list[dict]],
    *,
    signature: dict,
    shard_size: int = 64,
    process_index: int = 0,
    num_processes: int = 1,
    progress: Callable[[int, list[dict]], None] | None = None,
    key: Callable[[dict], str] = record_key,
) -> list[int]:
    """Run `work` on this process's pending shards and write each atomically; returns the shard indices written.

    Units are anything with a unique `.key` and an `.item`; `key(record)` gives the unit key a record answers.
    `progress(done_units, records)` is called after each shard (done_units counts this process's skipped ones too).
    """
    if shard_size < 1:
        raise DataError(f"shard size must be at least 1, got {shard_size}", field="shard_size")
    output_dir = Path(output_dir)
    check_run_signature(output_dir / RUN_CONFIG, {**signature, "shard_size": shard_size, "units": _digest(units)},
                        record=process_index == 0)
    (output_dir / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    n_shards = (len(units) + shard_size - 1) // shard_size
    mine = [k for k in range(n_shards) if k % num_processes == process_index]
    written = []
    kill_after = int(os.environ.get(KILL_AFTER_ENV, "0") or 0)
    for k in mine:
        chunk = units[k * shard_size : (k + 1) * shard_size]
        path = shard_path(output_dir, k)
        if path.exists():
            _read_shard(path, [u.key for u in chunk], key)  # done: check it, skip it
            if progress:
                progress(len(chunk), [])
            continue
        records = work(chunk)
        if [key(r) for r in records] != [u.key for u in chunk]:
            raise RuntimeError("work() must return one record per unit, in unit order")
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        written.append(k)
        if progress:
            progress(len(chunk), records)
        if kill_after and len(written) >= kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
    return written


def merge_shards(
    units: Sequence[Keyed], output_dir: str | Path, shard_size: int, key: Callable[[dict], str] = record_key
) -> Path | None:
    """Concatenate the shards into `generations.jsonl` when all exist (else None: the run is not finished)."""
    output_dir = Path(output_dir)
    n_shards = (len(units) + shard_size - 1) // shard_size
    paths = [shard_path(output_dir, k) for k in range(n_shards)]
    if not all(p.exists() for p in paths):
        return None
    lines = []
    for k, path in enumerate(paths):
        records = _read_shard(path, [u.key for u in units[k * shard_size : (k + 1) * shard_size]], key)
        lines.extend(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    atomic_write_text(output_dir / MERGED, "".join(lines))
    for stale in (output_dir / SHARD_DIR).glob(".shard-*.tmp"):  # left by a process killed mid-write
        stale.unlink(missing_ok=True)
    return output_dir / MERGED


def _digest(units: Sequence[Keyed]) -> str:
    """A fingerprint of the work list: unit keys (item id and annotator) and the items' inputs, in order."""
    digest = hashlib.sha256()
    for unit in units:
        digest.update(json.dumps([unit.key, unit.item.inputs], sort_keys=True).encode())
    return digest.hexdigest()[:16]


def _adapter_fingerprint(path: str) -> str:
    """`path`, plus the hash of its weights when it is a local folder (hub ids are taken as they are)."""
    from capo.manifest import file_sha256

    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        weights = Path(path) / name
        if weights.is_file():
            return f"{path}@sha256:{file_sha256(weights)[:16]}"
    return path


def render_prompt(tokenizer, item: Item) -> str:
    """The explainer's prompt for an item, as in SFT/CAPO training (`capo.data.prompts.prompt_messages`, zero-shot)."""
    return render_chat(tokenizer, prompt_messages(item))


def explain_units(
    backend: Backend, units: Sequence[Unit], *, adapter_ids: Mapping[str, str], max_new_tokens: int,
    prompt: Callable[[Item], str],
) -> list[dict]:
    """Generate for one shard: one `generate` call per adapter (all its units batched), records in unit order."""
    by_adapter: dict[str | None, list[int]] = {}
    for position, unit in enumerate(units):
        by_adapter.setdefault(unit.adapter, []).append(position)
    records: list[dict | None] = [None] * len(units)
    for adapter, positions in by_adapter.items():
        generations = backend.generate([prompt(units[p].item) for p in positions], adapter=adapter,
                                       max_new_tokens=max_new_tokens)
        for position, generation in zip(positions, generations, strict=True):
            unit = units[position]
            parsed = parse_response(generation.text, unit.item.task)
            records[position] = {
                "id": unit.item.id,
                "annotator": unit.annotator,
                "task": unit.item.task,
                "label": parsed[0] if parsed else None,
                "explanation": parsed[1] if parsed else None,
                "parsed": parsed is not None,
                "raw": generation.text,
                "model": backend.model_id,
                "adapter": adapter_ids.get(unit.annotator),
                "prompt_tokens": generation.prompt_tokens,
                "generated_tokens": generation.generated_tokens,
            }
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
    adapters: dict[str, str] = {}
    for spec in specs:
        name, sep, path = str(spec).partition("=")
        if not sep or not name.strip() or not path.strip():
            raise DataError(f"expected NAME=PATH, got {spec!r}", field="adapters")
        if name.strip() in adapters:
            raise DataError(f"adapter name {name.strip()!r} given twice", field="adapters")
        adapters[name.strip()] = path.strip()
    return adapters


@dataclass
class GenerateArguments:
    """Arguments of `recipes/generate.py` (a `TrlParser` dataclass; YAML config keys have the same names)."""

    model: str = "models/corpus-lm"  # base model: hub id or local folder
    dataset: str = "varierr"  # a `capo.data.loaders.load_dataset` name or path
    output_dir: str = "runs/generate"
    adapters: list[str] | None = None  # annotator explainers as NAME=PATH (hub id or folder), on the one base model
    base: bool = False  # also generate with the base model (annotator "base"); implied when there are no adapters
    split: str | None = "test"  # held-out items: this part of `capo.data.splits.split_items(seed=split_seed)`; None = all
    split_seed: int = 0
    limit: int | None = None  # only the first N items (after the split)
    backend: str = "hf"  # hf | vllm
    dtype: str = "auto"
    batch_size: int = 16
    max_new_tokens: int = 128
    shard_size: int = 32  # records per shard: the most work a kill can lose
    tensor_parallel_size: int = 1  # vLLM only


def select_items(dataset: str, split: str | None, split_seed: int = 0, limit: int | None = None) -> list[Item]:
    """The items of `split`, cut exactly as the explainers' training data was (`capo.train.pairs.load_task_data` for the
    data sets it knows; a source's own split, e.g. LeWiDi's, before a seeded re-split), so held-out stays held out."""
    from capo.data.loaders import load_dataset
    from capo.train.pairs import DATASET_TASK, load_task_data
    from capo.data.splits import SPLITS, predefined_split, split_items

    if dataset in DATASET_TASK:
        data = load_task_data(DATASET_TASK[dataset], dataset, split_seed)
        items = [i for name in SPLITS for i in data.items(name)] if split is None else data.items(split)
    else:
        items = load_dataset(dataset)
        if split is not None:
            has_own_split = items and all(i.meta.get("split") in SPLITS for i in items)
            cut = predefined_split(items) if has_own_split else split_items(items, seed=split_seed)
            items = cut.select(items, split)
    if limit is not None:
        if limit < 1:
            raise DataError(f"limit must be at least 1, got {limit}", field="limit")
        items = items[:limit]
    if not items:
        raise DataError("no items to generate for", path=dataset, field="split")
    return items


def run_generation(args: GenerateArguments, *, process_index: int | None = None,
                   num_processes: int | None = None) -> dict:
    """The whole job for this process; the main process merges the shards and writes the manifest.

    `process_index` / `num_processes` default to accelerate's (`PartialState`); passing them simulates one process
    of a multi-process run.
    """
    import torch
    from accelerate import PartialState

    from capo.generate.backends import backend_options, load_backend
    from capo.manifest import write_manifest

    # cpu=True lets several CPU processes (torchrun / accelerate launch without GPUs) form a gloo group.
    state = PartialState(cpu=not torch.cuda.is_available())
    index = state.process_index if process_index is None else process_index
    world = state.num_processes if num_processes is None else num_processes
    if args.backend == "vllm" and world > 1:
        raise DataError("the vllm backend runs in one process (use tensor_parallel_size for more GPUs)",
                        field="backend")
    items = select_items(args.dataset, args.split, args.split_seed, args.limit)
    adapters = parse_adapters(args.adapters or [])
    annotators: dict[str, str | None] = {name: name for name in adapters}
    if args.base or not adapters:
        if "base" in annotators:
            raise DataError("'base' names the base model; give the adapter another name", field="adapters")
        annotators["base"] = None
    units = plan_units(items, annotators)
    options = backend_options(args.backend, args.dtype, args.batch_size, args.tensor_parallel_size)
    signature = {key: getattr(args, key) for key in ("model", "dataset", "split", "split_seed", "limit", "backend",
                                                        "dtype", "batch_size", "max_new_tokens")}
    # An adapter retrained in place must not be mixed with records from its old weights.
    signature["annotators"] = {name: _adapter_fingerprint(adapters[name]) if name in adapters else None
                               for name in annotators}
    output_dir = Path(args.output_dir)
    n_shards = (len(units) + args.shard_size - 1) // args.shard_size
    check_run_signature(Path(args.output_dir) / RUN_CONFIG,
                        {**signature, "shard_size": args.shard_size, "units": _digest(units)}, record=False)
    done = sum(shard_path(output_dir, k).exists() for k in range(n_shards))
    main = index == 0
    if main:
        print(f"{len(items)} items x {len(annotators)} annotators = {len(units)} records in {n_shards} shards; "
              f"{done} of {n_shards} shards already done", flush=True)
    backend = load_backend(args.backend, args.model, adapters, **options)
    mine = sum(len(units[k * args.shard_size : (k + 1) * args.shard_size]) for k in range(index, n_shards, world))
    progress = Progress(mine, len(annotators), position=index, disable=not main)
    run_sharded(
        units, output_dir,
        lambda chunk: explain_units(backend, chunk, adapter_ids=adapters, max_new_tokens=args.max_new_tokens,
                                    prompt=lambda item: render_prompt(backend.tokenizer, item)),
        signature=signature, shard_size=args.shard_size, process_index=index, num_processes=world, progress=progress,
    )
    throughput = progress.close()
    if process_index is None:
        state.wait_for_everyone()
    summary = {"records": len(units), "shards": n_shards, "this_process": throughput, "merged": None}
    if main:
        merged = merge_shards(units, output_dir, args.shard_size)
        if merged is not None:
            records = [row for _, row in iter_jsonl(merged)]
            summary.update(merged=str(merged), unparsed=sum(not r["parsed"] for r in records))
            write_manifest(output_dir, config=args, extra={"summary": summary})
    return summary
