"""What SFT and CAPO train on, exported for reading: `data_prep/build_sft.py` and `data_prep/build_pairs.py`.

These files are a preview and an export, not training input: `recipes/sft.py` and `recipes/capo.py` rebuild the
same rows and pairs from the data set (whose content hash their run manifests record) and their own options, so the
pairs are defined once, by the recipe, and no second copy can drift from it. `--preview N` prints tokenised
examples with the loss mask and fails on prompt mismatches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from capo.data.datasets import load_task_data
from capo.data.schema import check_annotator
from capo.errors import DataError
from capo.io import check_model_path, check_output, write_jsonl
from capo.train.pairs import DEFAULT_VALIDITY, REJECTED_FROM, capo_pairs, preview, sft_rows


@dataclass
class ExportArguments:
    """Which annotator's rows, from which data, and where they go."""

    annotator: str = field(metadata={"help": "target annotator: A1..A4"})
    task: str = field(default="nli", metadata={"help": "nli or paraphrase"})
    dataset: str | None = field(default=None, metadata={
        "help": "varierr | lewidi-ven (nli), lewidi-par (paraphrase), or a path to your own JSONL "
                "(capo.data.formats.jsonl.load_items_jsonl, split by --split_seed); default per task"})
    split: str = field(default="train", metadata={"help": "train (training data) or dev/test (held-out evaluation)"})
    split_seed: int = field(default=0, metadata={
        "help": "item split seed of VariErr and your own JSONL (the corpus LM uses 0)"})
    few_shot: int = field(default=0, metadata={"help": "k worked examples from the target's train history"})
    seed: int = 0
    output: str | None = field(default=None, metadata={"help": "JSONL file to write (atomically)"})
    preview: int = field(default=0, metadata={
        "help": "print N tokenised examples with the loss mask ([[...]]); fail on prompt mismatches"})
    model: str = field(default="models/corpus-lm", metadata={"help": "tokenizer (hub id or folder) for --preview"})

    def check(self) -> None:
        """What can be checked before any data is read: the annotator, the counts, the output, the tokenizer."""
        check_annotator(self.annotator)
        for name in ("few_shot", "preview"):
            if getattr(self, name) < 0:
                raise DataError(f"must be a whole number of at least 0, got {getattr(self, name)}", field=name)
        if self.output:
            check_output(self.output)
        if self.preview:
            check_model_path(self.model, kind="tokenizer")


@dataclass
class SftExportArguments(ExportArguments):
    valid: str = field(default=DEFAULT_VALIDITY, metadata={"help": "validity predicate for SFT rows (any: all)"})


@dataclass
class PairExportArguments(ExportArguments):
    rejected_from: str = field(default="all", metadata={"help": f"one of: {', '.join(REJECTED_FROM)}"})
    chosen_valid: str = field(default=DEFAULT_VALIDITY, metadata={"help": "validity predicate for chosen responses"})
    rejected_valid: str = field(default=DEFAULT_VALIDITY, metadata={"help": "validity predicate for rejected ones"})
    max_pairs_per_item: int | None = field(default=None, metadata={
        "help": "cap on pairs per item (sampled with --seed)"})


def _finish(rows: list[dict], args: ExportArguments) -> list[dict]:
    if args.preview:
        from transformers import AutoTokenizer

        print(preview(rows, AutoTokenizer.from_pretrained(args.model), args.preview))
    if args.output:
        write_jsonl(args.output, rows)
    print(f"{len(rows)} rows for {args.annotator} ({args.task}, {args.split})"
          + (f" -> {args.output}" if args.output else ""))
    return rows


def export_sft_rows(args: SftExportArguments) -> list[dict]:
    """The target's SFT rows (conversational prompt/completion) of one split, printed, previewed and/or written."""
    args.check()
    data = load_task_data(args.task, args.dataset, args.split_seed)
    rows = sft_rows(data.items(args.split), args.annotator, few_shot=args.few_shot, few_shot_pool=data.items("train"),
                    valid=args.valid, seed=args.seed)
    return _finish(rows, args)


def export_pairs(args: PairExportArguments) -> list[dict]:
    """The target's CAPO preference pairs (prompt / chosen / rejected) of one split, as `export_sft_rows`."""
    args.check()
    data = load_task_data(args.task, args.dataset, args.split_seed)
    rows = capo_pairs(data.items(args.split), args.annotator, rejected_from=args.rejected_from,
                      chosen_valid=args.chosen_valid, rejected_valid=args.rejected_valid,
                      max_pairs_per_item=args.max_pairs_per_item, few_shot=args.few_shot,
                      few_shot_pool=data.items("train"), seed=args.seed)
    return _finish(rows, args)
