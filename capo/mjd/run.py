"""Sharded, resumable MJD runs on the one run engine (`capo.runner`): one unit per item, shards of `items_per_chunk`.

Every shard is scored in one scorer call on its own, so a shard's numbers do not depend on which process scored
it or whether the run was interrupted: the merged result of N processes equals that of one process. Output folder::

    run_config.json            the run signature (settings, model / data / explanation file content hashes)
    shards/shard-00000.jsonl   one file per shard (`id`, `distribution`, with --save_raw_scores `prompts`), atomic
    mjd.jsonl                  `id`, `distribution` per item, in input order, once every shard exists
    raw_scores.jsonl           with --save_raw_scores: `id`, `prompts` (per-prompt scores)
    human_chaosnli.jsonl       the items' ChaosNLI distributions, when they carry them
    run_manifest.json

A killed run restarted with the same arguments keeps the finished shards and scores the others.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from capo.data.distributions import write_distributions
from capo.data.prompts import render_chat
from capo.data.schema import Item
from capo.errors import DataError
from capo.generate.backends.base import DTYPES
from capo.generate.scoring import NextTokenScorer, option_token_ids
from capo.io import write_jsonl
from capo.mjd.estimate import (
    OPTION_LETTERS,
    MJDSettings,
    estimate_mjds,
    item_explanations,
    prompt_specs,
    user_message,
)
from capo.runner import ItemUnit, ShardedRun, check_positive, fingerprint

ENGINES = ("prefix_cache", "backend")


def mjd_run(output_dir: str | Path, items: Sequence[Item], *, items_per_chunk: int, signature: dict) -> ShardedRun:
    """The run of `items` in `output_dir`: one record per item, `items_per_chunk` items per shard and scorer call."""
    return ShardedRun(output_dir, [ItemUnit(item) for item in items], shard_size=items_per_chunk,
                      signature=signature, record_key=lambda record: record.get("id"), code=(__name__,))


def score_shards(
    run: ShardedRun,
    explanations: Mapping[str, Sequence[tuple[str, str]]],
    scorer: NextTokenScorer,
    settings: MJDSettings,
    render: Callable[[str], str],
    *,
    keep_prompts: bool = False,
    process_index: int = 0,
    num_processes: int = 1,
    progress: Callable[[int, list[dict]], None] | None = None,
) -> list[int]:
    """Score this process's unfinished shards (shard k belongs to process k % num_processes); returns those written."""

    def work(units: list[ItemUnit]) -> list[dict]:
        results = estimate_mjds([u.item for u in units], explanations, scorer, settings, render,
                                keep_prompts=keep_prompts)
        return [{"id": r.id, "distribution": r.distribution, **({"prompts": r.prompts} if keep_prompts else {})}
                for r in results]

    return run.run(work, process_index=process_index, num_processes=num_processes, progress=progress)


def write_results(run: ShardedRun, *, keep_prompts: bool = False) -> dict[str, list[float]]:
    """Write `mjd.jsonl` (id, distribution; input order) and, with `keep_prompts`, `raw_scores.jsonl`."""
    rows = run.merge()
    if rows is None:
        missing = next(k for k in range(run.n_shards) if not run.path(k).exists())
        raise DataError(f"{run.n_shards - len(run.done())} shard(s) not scored yet (run again to resume)",
                        path=str(run.output_dir), item=run.shard(missing)[0].key)
    distributions = {row["id"]: row["distribution"] for row in rows}
    write_distributions(run.output_dir / "mjd.jsonl", distributions)
    if keep_prompts:
        write_jsonl(run.output_dir / "raw_scores.jsonl", ({"id": r["id"], "prompts": r["prompts"]} for r in rows))
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
    dataset: str = field(default="nli341", metadata={"help": "a shipped data set name or a file (capo.data.registry)"})
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
    exclude_pretrained: bool = field(
        default=False, metadata={"help": "leave out (after --limit) the items the corpus LM was pre-trained on; "
                                         "their count is reported either way"}
    )
    save_raw_scores: bool = field(default=False, metadata={"help": "also write raw_scores.jsonl (per-prompt scores)"})

    def __post_init__(self) -> None:
        # Every value check happens here, while parsing: a bad value never reaches the output folder.
        from capo.generate.backends import BACKENDS

        if not self.output_dir or not str(self.output_dir).strip():
            raise DataError("output_dir is required", field="output_dir")
        check_positive(self, "items_per_chunk", "batch_size", "min_shared_tokens", "limit", "max_batch_tokens",
                       optional=("limit", "max_batch_tokens"))
        for name, value, valid in (("dtype", self.dtype, DTYPES), ("engine", self.engine, ENGINES),
                                   ("backend", self.backend, BACKENDS)):
            if value not in valid:
                raise DataError(f"unknown {name} {value!r} (valid: {', '.join(valid)})", field=name)
        self.settings()  # mode, k, max_orders, normalisation, temperature

    def settings(self) -> MJDSettings:
        return MJDSettings(mode=self.mode, k=self.k, explicit=self.explicit, max_orders=self.max_orders,
                           normalisation=self.normalisation, temperature=self.temperature, seed=self.seed)


def _load_scorer(args: MJDScriptArguments, device=None):
    """(scorer, tokenizer) for the chosen engine: our prefix-cache scorer, or a backend's own `score_next_token`; an
    HF model on `device` (None: `capo.precision.resolve_device`)."""
    from capo.generate.backends import backend_options, load_backend
    from capo.generate.backends.base import check_dtype

    check_dtype(args.dtype)  # before loading anything
    if args.engine == "backend":
        backend = load_backend(args.backend, args.model_name_or_path,
                               **backend_options(args.backend, args.dtype, args.batch_size, device=device))
        return backend, backend.tokenizer
    if args.engine != "prefix_cache":
        raise DataError(f"unknown engine {args.engine!r} (valid: prefix_cache, backend)", field="engine")
    backend = load_backend("hf", args.model_name_or_path, dtype=args.dtype, batch_size=args.batch_size,
                           device=device, min_shared_tokens=args.min_shared_tokens,
                           max_batch_tokens=args.max_batch_tokens)
    return backend.scorer, backend.tokenizer


def run_mjd(args: MJDScriptArguments, log: Callable[[str], None] = print) -> dict:
    """The whole `recipes/mjd.py` run: load, check, score this process's shards, merge (main process), manifest."""
    from accelerate import PartialState
    from transformers.utils import logging as hf_logging

    from capo.data.formats.mjd_files import load_model_explanations
    from capo.data.heldout import leave_out_pretrained
    from capo.data.registry import load_items
    from capo.generate.backends.base import check_dtype
    from capo.manifest import write_manifest
    from capo.models.corpus_lm import pretraining_item_ids
    from capo.precision import resolve_dtype

    settings = args.settings()
    args.dtype = resolve_dtype(check_dtype(args.dtype))  # auto: this machine's choice, so signature and manifest say it
    items = load_items(args.dataset)[: args.limit]
    if not items:
        raise DataError("no items", path=args.dataset)
    items = leave_out_pretrained(items, pretraining_item_ids(args.model_name_or_path), args.exclude_pretrained, log)
    data_files = [args.dataset] if Path(args.dataset).is_file() else []
    if args.explanations in ("human", "none"):
        source = args.explanations
    else:
        source = load_model_explanations(args.explanations)
        data_files.append(args.explanations)
    explanations = item_explanations(items, source if settings.mode != "none" else "none")
    if settings.mode != "none":  # before any model loads: an item without explanations has nothing to show
        empty = next((item.id for item in items if not explanations[item.id]), None)
        if empty is not None:
            raise DataError(f"no explanations for mode {settings.mode!r} (use mode none, or another source)",
                            path=args.dataset, item=empty, field="explanations")

    # Everything that shapes the output files, with the content of the model folder and of the data files.
    signature = {"model": fingerprint(args.model_name_or_path), "dataset": fingerprint(args.dataset),
                 "explanations": fingerprint(args.explanations), **asdict(settings), "engine": args.engine,
                 "backend": args.backend, "dtype": args.dtype, "min_shared_tokens": args.min_shared_tokens,
                 "batch_size": args.batch_size, "max_batch_tokens": args.max_batch_tokens,
                 "chat_template": args.chat_template, "limit": args.limit, "save_raw_scores": args.save_raw_scores,
                 "items_per_chunk": args.items_per_chunk,  # the engine's shard_size, under the name users give
                 "exclude_pretrained": args.exclude_pretrained}
    run = mjd_run(args.output_dir, items, items_per_chunk=args.items_per_chunk, signature=signature)
    run.check()  # before loading a model: fail fast
    import torch

    state = PartialState(cpu=not torch.cuda.is_available())  # CPU-only: torchrun/accelerate ranks meet over gloo
    hf_logging.disable_progress_bar()  # keep stderr for errors: one line each
    scorer, tokenizer = _load_scorer(args, state.device)  # each process its own device (resolve_device's rule)
    render = lambda content: render_chat(tokenizer, content, chat_template=args.chat_template)
    # Start-up check (the scorer repeats it on every prompt it scores): the letters must be single, distinct tokens
    # at the answer position.
    first = items[0]
    letter_ids = option_token_ids(tokenizer, [render(user_message(first, explanations[first.id],
                                                                  prompt_specs(first.id, len(explanations[first.id]), settings)[0],
                                                                  settings.explicit))], OPTION_LETTERS)

    from tqdm.auto import tqdm

    start = time.time()
    rank, world = state.process_index, state.num_processes
    done = set(run.done())  # one look at the folder, not one per shard
    todo = [k for k in run.shards_of(rank, world) if k not in done]
    bar = tqdm(total=len(todo), desc=f"mjd {Path(args.output_dir).name}", unit="shard", disable=rank != 0,
               leave=False)  # the main process's shards stand for all of them
    written = score_shards(run, explanations, scorer, settings, render, keep_prompts=args.save_raw_scores,
                           process_index=rank, num_processes=world, progress=lambda *_: bar.update(1))
    bar.close()
    seconds = time.time() - start
    state.wait_for_everyone()
    summary = {"items": len(items), "shards": run.n_shards, "shards_scored_here": len(written),
               "seconds": round(seconds, 2), "letter_token_ids": letter_ids, "processes": world}
    if state.is_main_process:
        write_results(run, keep_prompts=args.save_raw_scores)
        if items[0].distributions.get("chaosnli") is not None and all("chaosnli" in i.distributions for i in items):
            write_human(run.output_dir / "human_chaosnli.jsonl", items)
        write_manifest(args.output_dir, config={"args": args, "settings": settings}, data_files=data_files,
                       seed=args.seed, extra={"summary": summary, "scorer_stats": getattr(scorer, "totals", {})})
        log(f"MJDs for {len(items)} items -> {run.output_dir / 'mjd.jsonl'} ({seconds:.1f}s)")
    return summary
