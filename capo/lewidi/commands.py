"""`eval/lewidi.py`'s three commands as library calls: `predict` (a baseline or an LLM predictor), `score`
(official scores of prediction files) and `export` (Codabench files), each with its argument dataclass (TrlParser
dataclasses: YAML keys have the same names).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from capo.data.formats.lewidi import check_dataset, lewidi_split_path, read_lewidi
from capo.errors import DataError
from capo.io import check_output, write_json
from capo.lewidi.baselines import most_frequent_predictions, random_predictions
from capo.lewidi.explainers import output_paths, predict_lewidi
from capo.lewidi.predictions import (
    aggregate_soft,
    read_annotator_predictions,
    read_soft_predictions,
    write_annotator_predictions,
    write_soft_predictions,
)
from capo.lewidi.score import score
from capo.lewidi.submission import write_submission


@dataclass
class PredictArguments:
    """`eval/lewidi.py predict`: predictions for every (item, annotator) of a split, from a baseline (--baseline) or
    an LLM (--model): each annotator's explainer (--explainers with {annotator}), one conditioned explainer
    (--explainers without {annotator}), or the base model alone (no --explainers)."""

    dataset: str = field(metadata={"help": "ven (VariErrNLI) or par (Paraphrase)"})
    output: str = field(metadata={"help": "per-annotator prediction JSONL to write"})
    split: str = field(default="dev", metadata={"help": "train, dev, test, or a LeWiDi JSON file (labels may be absent)"})
    baseline: str | None = field(default=None, metadata={"help": "most_frequent (the default without --model) or "
                                                                 "random"})
    vote: str = field(default="value", metadata={"help": "most_frequent on VEN: value (reproduces the published "
                                                         "baseline), set, or label; see capo/lewidi/baselines.py"})
    seed: int = field(default=0, metadata={"help": "random baseline seed"})
    soft_output: str | None = field(default=None, metadata={"help": "also write the aggregated soft labels (JSONL; "
                                                                    "with --model default: beside --output, _soft)"})
    train_file: str | None = field(default=None, metadata={"help": "training split (default: the dataset's LeWiDi "
                                                                    "train file; nothing else is used)"})
    model: str | None = field(default=None, metadata={
        "help": "LLM predictor: base model (hub id or folder) that scores every label option after the explainer's "
                "prompt and 'Label:' (capo/lewidi/explainers.py)"})
    explainers: str | None = field(default=None, metadata={
        "help": "with --model: adapter folder template, {task} = nli or paraphrase, {annotator} = A1..A4 (LeWiDi "
                "Ann1..Ann4), e.g. runs/sft/{task}/{annotator}; without {annotator}: one conditioned adapter, "
                "each annotator's id in the prompt; omitted: the base model alone. Adapters that trained on the "
                "split's (or the decision split's) items are refused"})
    decision: str = field(default="dev", metadata={
        "help": "with --model: dev (fitted on --decision_split), a VEN threshold in (0, 1), or a Par rule: argmax, "
                "expectation (rounded), median"})
    decision_split: str = field(default="dev", metadata={
        "help": "labelled split the decision is fitted on (dev, or a LeWiDi JSON file); applied to --split"})
    soft_mean_output: str | None = field(default=None, metadata={
        "help": "with --model: soft labels as the mean of the annotators' probabilities (default: beside --output, "
                "_soft_mean)"})
    probs_output: str | None = field(default=None, metadata={
        "help": "with --model: per-(item, annotator) label probabilities, official label order (default: beside "
                "--output, _probs)"})
    dtype: str = field(default="float32", metadata={"help": "with --model: float32, bfloat16, float16 or auto"})
    batch_size: int = field(default=16, metadata={"help": "with --model: prompts per forward pass"})
    min_shared_tokens: int = field(default=16, metadata={
        "help": "with --model: shortest prompt prefix the scorer's KV cache shares (capo/generate/scoring.py); "
                "0: every prompt scored whole"})
    allow_unchecked_adapters: bool = field(default=False, metadata={
        "help": "with --explainers: use adapters without a run manifest (a hub adapter, a copied folder), whose "
                "training items cannot be checked against the split (refused otherwise); the report names them"})
    report_output: str | None = field(default=None, metadata={
        "help": "also write the JSON report predict prints (with --model: the decision, how it was fitted and, on a "
                "labelled split, the scores) to this file"})


@dataclass
class ScoreArguments:
    """`eval/lewidi.py score`: the official scores of prediction files against a labelled split."""

    dataset: str = field(metadata={"help": "ven or par"})
    split: str = field(default="dev", metadata={"help": "train, dev, test (VEN), or a labelled LeWiDi JSON file"})
    predictions: str | None = field(default=None, metadata={"help": "per-annotator prediction JSONL"})
    soft: str | None = field(default=None, metadata={"help": "soft-label JSONL (default: aggregated from --predictions)"})
    output: str | None = field(default=None, metadata={"help": "also write the scores as JSON"})


@dataclass
class ExportArguments:
    """`eval/lewidi.py export`: Codabench submission files (a soft and a perspectivist TSV) for one dataset."""

    dataset: str = field(metadata={"help": "ven or par"})
    predictions: str = field(metadata={"help": "per-annotator prediction JSONL covering the split"})
    output_dir: str = field(metadata={"help": "folder for the TSV files and the zip (export VEN and Par into the same one)"})
    split: str = field(default="test", metadata={"help": "the split the predictions are for (a `_test_clear` file works)"})
    soft: str | None = field(default=None, metadata={"help": "soft-label JSONL (default: aggregated from --predictions)"})
    naming: str = field(default="dataset", metadata={"help": "file names: dataset (VariErrNLI_test_soft.tsv) or "
                                                             "short (ven_test_soft.tsv)"})
    zip_name: str | None = field(default="res.zip", metadata={"help": "zip of every submission file in output_dir "
                                                                     "(empty: no zip)"})


def predict(args: PredictArguments) -> dict:
    """`eval/lewidi.py predict`: writes the predictions (and soft labels) and returns the report it prints, also
    written to --report_output when given (checked before any work: an LLM run takes minutes)."""
    dataset = check_dataset(args.dataset)
    if args.report_output:
        check_output(args.report_output)
        outputs = (output_paths(args.output, args.soft_output, args.soft_mean_output, args.probs_output).values()
                   if args.model else (args.output, args.soft_output))
        if Path(args.report_output).resolve() in {Path(path).resolve() for path in outputs if path}:
            raise DataError("names the same file as another output", field="report_output")
    report = _predict_model(dataset, args) if args.model else _predict_baseline(dataset, args)
    if args.report_output:
        write_json(args.report_output, report)
    return report


def _predict_model(dataset: str, args: PredictArguments) -> dict:
    """An LLM predictor (`capo.lewidi.explainers.predict_lewidi`)."""
    if args.baseline:
        raise DataError("--baseline and --model are two predictors: give one", field="baseline")
    return predict_lewidi(dataset, args.split, args.output, model=args.model, explainers=args.explainers,
                          decision=args.decision, decision_split=args.decision_split, soft_output=args.soft_output,
                          soft_mean_output=args.soft_mean_output, probs_output=args.probs_output, dtype=args.dtype,
                          batch_size=args.batch_size, min_shared_tokens=args.min_shared_tokens,
                          allow_unchecked_adapters=args.allow_unchecked_adapters,
                          log=lambda msg: print(msg, flush=True))


def _predict_baseline(dataset: str, args: PredictArguments) -> dict:
    """A reference baseline (`capo.lewidi.baselines`), fitted on the train split only."""
    if args.explainers:
        raise DataError("--explainers are adapters on a base model: give --model too", field="explainers")
    items = read_lewidi(lewidi_split_path(dataset, args.split), dataset)
    if (args.baseline or "most_frequent") == "most_frequent":
        train = read_lewidi(args.train_file or lewidi_split_path(dataset, "train"), dataset)
        predictions = most_frequent_predictions(train, items, args.vote)
    elif args.baseline == "random":
        predictions = random_predictions(items, args.seed)
    else:
        raise DataError(f"unknown baseline {args.baseline!r} (valid: most_frequent, random)", field="baseline")
    write_annotator_predictions(args.output, predictions, dataset)
    if args.soft_output:
        write_soft_predictions(args.soft_output, aggregate_soft(items, predictions))
    return {"items": len(items), "predictions": len(predictions), "output": args.output}


def score_files(args: ScoreArguments) -> dict:
    """`eval/lewidi.py score`: the official scores of the prediction files, also written to --output when given."""
    dataset = check_dataset(args.dataset)
    items = read_lewidi(lewidi_split_path(dataset, args.split), dataset)
    predictions = read_annotator_predictions(args.predictions, dataset) if args.predictions else None
    soft = read_soft_predictions(args.soft, dataset) if args.soft else None
    report = score(items, predictions, soft, predictions_path=args.predictions or "", soft_path=args.soft or "")
    report = {"dataset": dataset, "split": args.split, **report}
    if args.output:
        write_json(args.output, report)
    return report


def export(args: ExportArguments) -> dict:
    """`eval/lewidi.py export`: the Codabench files of one dataset (and the zip of the folder's files)."""
    dataset = check_dataset(args.dataset)
    items = read_lewidi(lewidi_split_path(dataset, args.split), dataset)
    predictions = read_annotator_predictions(args.predictions, dataset)
    soft = read_soft_predictions(args.soft, dataset) if args.soft else None
    written = write_submission(args.output_dir, items, predictions, soft, naming=args.naming,
                               zip_name=args.zip_name or None, predictions_path=args.predictions,
                               soft_path=args.soft or "")
    return {"items": len(items), "written": [str(p) for p in written]}


COMMANDS = {"predict": PredictArguments, "score": ScoreArguments, "export": ExportArguments}
RUN = {"predict": predict, "score": score_files, "export": export}
