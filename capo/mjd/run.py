"""Sharded, resumable MJD runs: items in fixed chunks, chunks spread over processes, one shard file per process.

The chunking depends only on the item list and `items_per_chunk`, and every chunk is scored in one scorer call
on its own, so a chunk's numbers do not depend on which process scored it or whether the run was interrupted:
the merged result of N processes equals that of one process. Each process appends finished chunks to its shard
(`shards/mjd-<rank>-of-<world>.jsonl`, flushed and fsynced per chunk); a restarted run keeps the chunks that are
complete in any shard and drops a chunk cut off by a kill. The merged `mjd.jsonl` is written atomically.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from capo.errors import DataError
from capo.io import check_run_signature, write_jsonl
from capo.data.loaders import write_distributions
from capo.data.prompts import render_chat
from capo.generate.scoring import NextTokenScorer, option_token_ids
from capo.mjd.estimate import OPTION_LETTERS, MJDSettings, estimate_mjds, item_explanations, prompt_specs, user_message
from capo.data.schema import Item

SHARD_DIR = "shards"
RUN_KEY_FILE = "mjd_run_key.json"


def chunk_items(items: Sequence[Item], items_per_chunk: int) -> list[list[Item]]:
    if items_per_chunk < 1:
        raise DataError(f"items_per_chunk must be at least 1, got {items_per_chunk}", field="items_per_chunk")
    return [list(items[i : i + items_per_chunk]) for i in range(0, len(items), items_per_chunk)]


def _read_shard(path: Path) -> list[dict]:
    """Rows of a shard; a last line cut off by a kill (no newline, or not JSON) is ignored."""
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise DataError("malformed shard line (delete the output folder to start over)", path=str(path),
                                line=number) from None
    return rows


def completed_chunks(output_dir: str | Path, chunks: Sequence[Sequence[Item]]) -> dict[int, list[dict]]:
    """chunk index -> its rows, for every chunk that some shard holds completely (in chunk item order)."""
    wanted = {c: [item.id for item in chunk] for c, chunk in enumerate(chunks)}
    found: dict[int, dict[str, dict]] = {}
    for path in sorted((Path(output_dir) / SHARD_DIR).glob("mjd-*.jsonl")):
        by_chunk: dict[int, dict[str, dict]] = {}
        for row in _read_shard(path):
            by_chunk.setdefault(row.get("chunk"), {})[row.get("id")] = row
        for c, rows in by_chunk.items():
            if c in wanted and c not in found and set(wanted[c]) <= set(rows):
                found[c] = rows
    return {c: [rows[i] for i in wanted[c]] for c, rows in found.items()}


def run_shard(
    output_dir: str | Path,
    items: Sequence[Item],
    explanations: Mapping[str, Sequence[tuple[str, str]]],
    scorer: NextTokenScorer,
    settings: MJDSettings,
    render: Callable[[str], str],
    *,
    items_per_chunk: int = 32,
    rank: int = 0,
    world: int = 1,
    keep_prompts: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Score this process's unfinished chunks (chunk c belongs to rank c % world); returns chunks scored now."""
    chunks = chunk_items(items, items_per_chunk)
    done = completed_chunks(output_dir, chunks)
    shard = Path(output_dir) / SHARD_DIR / f"mjd-{rank:05d}-of-{world:05d}.jsonl"
    shard.parent.mkdir(parents=True, exist_ok=True)
    if shard.exists():  # drop what a kill cut off, keep complete chunks (rewritten atomically)
        kept = [row for c, rows in sorted(done.items()) for row in rows if c % world == rank]
        keep_ids = {(row["chunk"], row["id"]) for row in kept}
        write_jsonl(shard, [row for row in _read_shard(shard) if (row.get("chunk"), row.get("id")) in keep_ids])
    todo = [c for c in range(len(chunks)) if c % world == rank and c not in done]
    with open(shard, "a", encoding="utf-8") as handle:
        for n, c in enumerate(todo, start=1):
            results = estimate_mjds(chunks[c], explanations, scorer, settings, render, keep_prompts=keep_prompts)
            lines = []
            for result in results:
                row = {"id": result.id, "chunk": c, "distribution": result.distribution}
                if keep_prompts:
                    row["prompts"] = result.prompts
                lines.append(json.dumps(row, ensure_ascii=False) + "\n")
            handle.write("".join(lines))
            handle.flush()
            os.fsync(handle.fileno())
            if progress:
                progress(n, len(todo))
    return len(todo)


def merge_shards(output_dir: str | Path, items: Sequence[Item], *, items_per_chunk: int, keep_prompts: bool = False) -> dict[str, list[float]]:
    """Write `mjd.jsonl` (id, distribution; input order) and, with `keep_prompts`, `raw_scores.jsonl`."""
    chunks = chunk_items(items, items_per_chunk)
    done = completed_chunks(output_dir, chunks)
    missing = [c for c in range(len(chunks)) if c not in done]
    if missing:
        first = chunks[missing[0]][0].id
        raise DataError(f"{len(missing)} chunk(s) not scored yet (run again to resume)", path=str(output_dir), item=first)
    rows = [row for c in range(len(chunks)) for row in done[c]]
    distributions = {row["id"]: row["distribution"] for row in rows}
    write_distributions(Path(output_dir) / "mjd.jsonl", distributions)
    if keep_prompts:
        write_jsonl(Path(output_dir) / "raw_scores.jsonl", ({"id": r["id"], "prompts": r.get("prompts", [])} for r in rows))
    return distributions


def write_human(path: str | Path, items: Sequence[Item], name: str = "chaosnli") -> None:
    """The items' reference distributions (default ChaosNLI) as a distribution file for eval/distributions.py."""
    missing = [item.id for item in items if name not in item.distributions]
    if missing:
        raise DataError(f"no {name!r} distribution", item=missing[0], field=f"distributions.{name}")
    write_distributions(path, {item.id: item.distributions[name] for item in items})



@dataclass
class MJDScriptArguments:
    """Arguments of `recipes/mjd.py` (YAML via `--config`, command-line flags override)."""

    output_dir: str | None = field(default=None, metadata={"help": "folder for mjd.jsonl, shards, manifest"})
    model_name_or_path: str = field(default="models/corpus-lm", metadata={"help": "hub id or local folder"})
    dataset: str = field(default="nli341", metadata={"help": "a shipped data set name or a file (capo.data.loaders)"})
    explanations: str = field(
        default="human", metadata={"help": "human (the items' annotations), none, or a released model-explanation file"}
    )
    mode: str = field(default="serial", metadata={"help": "none | serial | parallel"})
    k: int | None = field(default=None, metadata={"help": "serial: explanations per prompt (default: all)"})
    explicit: bool = field(default=False, metadata={"help": "append 'So I choose <label>.' to each explanation"})
    max_orders: int = field(default=24, metadata={"help": "most explanation orders per item (seeded sample above)"})
    normalisation: str = field(default="p_softmax", metadata={"help": "p_norm | p_softmax | prob"})
    temperature: float = field(default=20.0, metadata={"help": "p_softmax temperature"})
    seed: int = field(default=0, metadata={"help": "seed of the explanation-order sample"})
    engine: str = field(default="prefix_cache", metadata={"help": "prefix_cache (HF model, KV reuse) | backend"})
    backend: str = field(default="hf", metadata={"help": "engine backend: hf | vllm (capo.generate.backends)"})
    min_shared_tokens: int = field(default=16, metadata={"help": "prefix_cache: shortest shared segment cached"})
    batch_size: int = field(default=32, metadata={"help": "most rows per forward pass"})
    max_batch_tokens: int | None = field(default=None, metadata={"help": "prefix_cache: most padded new tokens per pass"})
    dtype: str = field(default="float32", metadata={"help": "float32 | bfloat16 | float16 | auto"})
    chat_template: bool = field(default=True, metadata={"help": "render prompts with the tokenizer's chat template"})
    items_per_chunk: int = field(default=32, metadata={"help": "items per scorer call and per resumable unit"})
    limit: int | None = field(default=None, metadata={"help": "first N items only"})
    save_raw_scores: bool = field(default=False, metadata={"help": "also write raw_scores.jsonl (per-prompt scores)"})

    def settings(self) -> MJDSettings:
        return MJDSettings(mode=self.mode, k=self.k, explicit=self.explicit, max_orders=self.max_orders,
                           normalisation=self.normalisation, temperature=self.temperature, seed=self.seed)


def _load_scorer(args: MJDScriptArguments, device):
    """(scorer, tokenizer) for the chosen engine: our prefix-cache scorer, or a backend's own `score_next_token`."""
    from capo.generate.backends import backend_options, load_backend
    from capo.generate.backends.base import check_dtype

    check_dtype(args.dtype)  # before loading anything
    if args.engine == "backend":
        backend = load_backend(args.backend, args.model_name_or_path,
                               **backend_options(args.backend, args.dtype, args.batch_size))
        return backend, backend.tokenizer
    if args.engine != "prefix_cache":
        raise DataError(f"unknown engine {args.engine!r} (valid: prefix_cache, backend)", field="engine")
    backend = load_backend("hf", args.model_name_or_path, dtype=args.dtype, batch_size=args.batch_size,
                           device=str(device), min_shared_tokens=args.min_shared_tokens,
                           max_batch_tokens=args.max_batch_tokens)
    return backend.scorer, backend.tokenizer


def run_mjd(args: MJDScriptArguments, log: Callable[[str], None] = print) -> dict:
    """The whole `recipes/mjd.py` run: load, check, score this process's chunks, merge (main process), manifest."""
    from accelerate import PartialState
    from transformers.utils import logging as hf_logging

    from capo.data.loaders import load_dataset, load_model_explanations
    from capo.manifest import write_manifest

    if not args.output_dir:
        raise DataError("output_dir is required", field="output_dir")
    settings = args.settings()
    items = load_dataset(args.dataset)[: args.limit]
    if not items:
        raise DataError("no items", path=args.dataset)
    data_files = [args.dataset] if Path(args.dataset).exists() else []
    if args.explanations in ("human", "none"):
        source = args.explanations
    else:
        source = load_model_explanations(args.explanations)
        data_files.append(args.explanations)
    explanations = item_explanations(items, source if settings.mode != "none" else "none")

    key = {"model": args.model_name_or_path, "dataset": args.dataset, "explanations": args.explanations,
           **asdict(settings), "engine": args.engine, "backend": args.backend, "dtype": args.dtype,
           "min_shared_tokens": args.min_shared_tokens, "batch_size": args.batch_size,
           "max_batch_tokens": args.max_batch_tokens,
           "chat_template": args.chat_template, "items_per_chunk": args.items_per_chunk, "limit": args.limit}
    check_run_signature(Path(args.output_dir) / RUN_KEY_FILE, key, record=False)  # before loading a model: fail fast
    import torch

    state = PartialState(cpu=not torch.cuda.is_available())  # CPU-only: torchrun/accelerate ranks meet over gloo
    hf_logging.disable_progress_bar()  # keep stderr for errors: one line each
    scorer, tokenizer = _load_scorer(args, state.device)
    render = lambda content: render_chat(tokenizer, content, chat_template=args.chat_template)
    # Start-up check (the scorer repeats it on every prompt it scores): the letters must be single, distinct tokens
    # at the answer position.
    first = items[0]
    letter_ids = option_token_ids(tokenizer, [render(user_message(first, explanations[first.id],
                                                                  prompt_specs(first.id, len(explanations[first.id]), settings)[0],
                                                                  settings.explicit))], OPTION_LETTERS)
    if state.is_main_process:
        check_run_signature(Path(args.output_dir) / RUN_KEY_FILE, key)
    state.wait_for_everyone()

    start = time.time()
    rank, world = state.process_index, state.num_processes

    def progress(n: int, total: int) -> None:
        seconds = time.time() - start
        log(f"[{rank}/{world}] chunk {n}/{total} ({n / max(seconds, 1e-9):.2f} chunks/s)")

    scored = run_shard(args.output_dir, items, explanations, scorer, settings, render,
                       items_per_chunk=args.items_per_chunk, rank=rank, world=world,
                       keep_prompts=args.save_raw_scores, progress=progress)
    seconds = time.time() - start
    state.wait_for_everyone()
    summary = {"items": len(items), "chunks_scored_here": scored, "seconds": round(seconds, 2),
               "letter_token_ids": letter_ids, "processes": world}
    if state.is_main_process:
        merge_shards(args.output_dir, items, items_per_chunk=args.items_per_chunk, keep_prompts=args.save_raw_scores)
        if items[0].distributions.get("chaosnli") is not None and all("chaosnli" in i.distributions for i in items):
            write_human(Path(args.output_dir) / "human_chaosnli.jsonl", items)
        write_manifest(args.output_dir, config={"args": args, "settings": settings}, data_files=data_files,
                       seed=args.seed, extra={"summary": summary, "scorer_stats": getattr(scorer, "totals", {})})
        log(f"MJDs for {len(items)} items -> {Path(args.output_dir) / 'mjd.jsonl'} ({seconds:.1f}s)")
    return summary
