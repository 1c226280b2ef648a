"""Build SFT rows (conversational prompt/completion) for one target annotator.

    python data_prep/build_sft.py --annotator A2 --task nli --output runs/data/sft_A2_nli.jsonl
        [--dataset varierr|lewidi-ven|lewidi-par|path/to/your.jsonl] [--split train] [--few_shot 0]
        [--valid peer_majority_not_self_corrected] [--preview 3 --model models/corpus-lm]
"""

from __future__ import annotations

import argparse

from capo.cli import ArgumentParser, run_main
from capo.data.datasets import load_task_data
from capo.data.schema import check_annotator
from capo.errors import DataError
from capo.io import check_model_path, check_output, write_jsonl
from capo.train.pairs import DEFAULT_VALIDITY, preview, sft_rows


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--annotator", required=True, help="target annotator: A1..A4")
    parser.add_argument("--task", default="nli", help="nli or paraphrase")
    parser.add_argument("--dataset", help="varierr | lewidi-ven (nli), lewidi-par (paraphrase), or a path to your own "
                        "JSONL (capo.data.formats.jsonl.load_items_jsonl, split by --split_seed); default per task")
    parser.add_argument("--split", default="train", help="train (training data) or dev/test (held-out evaluation)")
    parser.add_argument("--split_seed", type=int, default=0,
                        help="item split seed of VariErr and your own JSONL (the corpus LM uses 0)")
    parser.add_argument("--few_shot", type=int, default=0, help="k worked examples from the target's train history")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="JSONL file to write (atomically)")
    parser.add_argument("--preview", type=int, default=0, metavar="N",
                        help="print N tokenised examples with the loss mask ([[...]]); fail on prompt mismatches")
    parser.add_argument("--model", default="models/corpus-lm", help="tokenizer (hub id or folder) for --preview")


def check_common_arguments(args: argparse.Namespace) -> None:
    """What can be checked before any data is read: the annotator, the counts, the output file, the --preview
    tokenizer."""
    check_annotator(args.annotator)
    for name in ("few_shot", "preview"):  # argparse takes -1, which would silently mean 0
        if getattr(args, name) < 0:
            raise DataError(f"must be a whole number of at least 0, got {getattr(args, name)}", field=name)
    if args.output:
        check_output(args.output)
    if args.preview:
        check_model_path(args.model, kind="tokenizer")


def finish(rows: list[dict], args: argparse.Namespace) -> None:
    if args.preview:
        from transformers import AutoTokenizer

        print(preview(rows, AutoTokenizer.from_pretrained(args.model), args.preview))
    if args.output:
        write_jsonl(args.output, rows)
    print(f"{len(rows)} rows for {args.annotator} ({args.task}, {args.split})" + (f" -> {args.output}" if args.output else ""))


@run_main
def main(argv: list[str] | None = None) -> list[dict]:
    parser = ArgumentParser(description=__doc__)
    add_common_arguments(parser)
    parser.add_argument("--valid", default=DEFAULT_VALIDITY, help="validity predicate for SFT rows (any: all)")
    args = parser.parse_args(argv)
    check_common_arguments(args)
    data = load_task_data(args.task, args.dataset, args.split_seed)
    rows = sft_rows(data.items(args.split), args.annotator, few_shot=args.few_shot, few_shot_pool=data.items("train"),
                    valid=args.valid, seed=args.seed)
    finish(rows, args)
    return rows


if __name__ == "__main__":
    main()
