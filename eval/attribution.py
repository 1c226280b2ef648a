"""Likelihood attribution of per-annotator explainers on held-out items (no judge needed).

    python eval/attribution.py --model models/corpus-lm \
        --adapter sft=runs/attr/seed{seed}/sft/{task}/{annotator} \
        --adapter capo=runs/attr/seed{seed}/capo/{task}/{annotator} \
        --seeds 0 1 2 [--splits dev test] [--exclude_pretrained true] [--output results/attribution.json] \
        [--scores_dir results/attribution_scores]

For every target annotator: the share of held-out comparisons in which the model scores the target's real
explanation above another annotator's (length-normalised log-likelihood), for the base model and each adapter kind,
the gain over base with a 95 % paired bootstrap interval over items, and a control (another annotator's model).
Held-out items follow the split recorded in the adapters' run manifests (`capo.data.heldout`); an item an adapter
trained on is refused, and so is an adapter without a run manifest (a hub adapter, a copied folder: what it trained
on is unknown) unless --allow_unchecked_adapters true, which the report then records (unchecked_adapters). Items the
base corpus LM was pre-trained on are counted and left out by default.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads slow shared CPUs 10-25x

from capo.cli import ArgumentParser, run_main
from capo.data.datasets import load_task_data
from capo.data.heldout import select_heldout
from capo.data.schema import ANNOTATORS, check_annotator
from capo.errors import DataError
from capo.evaluate.behaviour.attribution import (
    adapter_folders,
    adapter_names,
    attribution_report,
    format_report,
)
from capo.generate.backends.base import DTYPES
from capo.io import check_model_path, check_output, write_json


def _flag(text: str, name: str = "exclude_pretrained") -> bool:
    if text.lower() not in ("true", "false"):
        raise DataError(f"expected true or false, got {text!r}", field=name)
    return text.lower() == "true"


@run_main
def main(argv: list[str] | None = None) -> dict:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="models/corpus-lm", help="base model (hub id or folder)")
    parser.add_argument("--adapter", action="append", default=[], metavar="KIND=TEMPLATE",
                        help="adapter folders, with {seed}, {task}, {annotator} filled in; repeatable. A template "
                             "without {annotator} is one conditioned explainer (trained with --annotator all), "
                             "scored with each target's id in the prompt")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--annotators", nargs="+", default=list(ANNOTATORS))
    parser.add_argument("--task", default="nli")
    parser.add_argument("--dataset", help="default: varierr for nli, lewidi-par for paraphrase; or your own JSONL")
    parser.add_argument("--split_seed", type=int, default=0,
                        help="split of items the adapters' manifests do not know (theirs decides the others)")
    parser.add_argument("--splits", nargs="+", default=["dev", "test"], help="held-out splits to score")
    parser.add_argument("--exclude_pretrained", default="true",
                        help="true: leave out items the base corpus LM was pre-trained on (their count is reported)")
    parser.add_argument("--limit", type=int, help="score at most the first N held-out items of each split")
    parser.add_argument("--dtype", default="float32", choices=DTYPES,
                        help="model weights (bfloat16: ~2x faster on CPUs with bf16 kernels)")
    parser.add_argument("--output", help="write the full report as JSON")
    parser.add_argument("--scores_dir", help="keep each model's scores here as it finishes; a rerun with the same "
                                             "settings resumes at the next model")
    parser.add_argument("--allow_unchecked_adapters", default="false",
                        help="true: use adapters without a run manifest (their training items are not checked; the "
                             "report names them)")
    args = parser.parse_args(argv)
    allow_unchecked = _flag(args.allow_unchecked_adapters, "allow_unchecked_adapters")
    for annotator in args.annotators:
        check_annotator(annotator)
    adapters = {}
    for spec in args.adapter:
        kind, sep, template = spec.partition("=")
        if not sep or not kind or not template:
            raise DataError(f"--adapter expects KIND=TEMPLATE, got {spec!r}")
        adapters[kind] = template
    if "train" in args.splits:
        raise DataError("attribution is measured on held-out items: use dev and/or test, not train")
    if args.limit is not None and args.limit < 1:
        raise DataError(f"--limit must be at least 1, got {args.limit}", field="--limit")
    if args.output:
        check_output(args.output)
    check_model_path(args.model)
    try:
        folders = adapter_names(adapter_folders(adapters, args.seeds, args.annotators, args.task))
    except (KeyError, IndexError, ValueError) as err:
        raise DataError(f"bad adapter template: use {{seed}}, {{task}}, {{annotator}} ({err})", field="--adapter") from None
    for path in folders.values():  # every adapter the report will load, before the first model loads
        check_model_path(path, kind="adapter")
    exclude = _flag(args.exclude_pretrained)
    data = load_task_data(args.task, args.dataset, args.split_seed)
    items = [item for split in args.splits for item in select_heldout(data, split, folders)[: args.limit]]
    report = attribution_report(args.model, adapters, items, seeds=args.seeds, annotators=args.annotators,
                                task=args.task, exclude_pretrained=exclude, dtype=args.dtype,
                                scores_dir=args.scores_dir, allow_unchecked_adapters=allow_unchecked,
                                log=lambda msg: print(msg, flush=True))
    report.update(model=args.model, adapters=adapters, splits=args.splits, task=args.task,
                  dataset=data.dataset, exclude_pretrained=exclude, limit=args.limit, dtype=args.dtype)
    print(format_report(report, list(adapters)))
    if args.output:
        write_json(args.output, report)
    return report


if __name__ == "__main__":
    main()
