"""One fine-tuning run: the soft-label `Trainer`, the run signature that guards resumption, and `finetune()`.

A run folder holds `run_signature.json` (the settings and a content hash of every input); a restart resumes from
the last complete checkpoint only when the new settings and data give the same signature, and refuses in one line
otherwise, so checkpoints of two different runs are never mixed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from transformers import Trainer

from capo.data.distributions import write_distributions
from capo.data.formats.common import CHAOS_DIR
from capo.data.formats.mjd_files import load_nli341
from capo.data.schema import NLI
from capo.errors import DataError
from capo.evaluate.finetune.arguments import FinetuneArguments
from capo.evaluate.finetune.data import Example, FinetuneData, load_finetune_data, source_name, to_dataset
from capo.evaluate.finetune.plots import plot_training_curves
from capo.evaluate.finetune.scoring import compute_metrics, constant_scores, score, softmax_logits
from capo.io import check_run_signature, last_complete_checkpoint, write_json

SIGNATURE_FILE = "run_signature.json"
METRICS_FILE = "metrics.json"  # written last: its presence marks a finished run
# TrainingArguments fields that change where or how a run reports, never what it computes: a restart may change them.
_REPORTING_FIELDS = frozenset({
    "output_dir", "run_name", "logging_dir", "report_to", "disable_tqdm", "log_level", "log_level_replica",
    "log_on_each_node", "logging_steps", "logging_strategy", "logging_first_step", "logging_nan_inf_filter",
    "save_total_limit", "resume_from_checkpoint", "push_to_hub", "hub_model_id", "hub_strategy", "hub_token",
    "hub_private_repo", "hub_always_push", "hub_revision", "dataloader_num_workers", "dataloader_persistent_workers",
    "dataloader_prefetch_factor", "dataloader_pin_memory", "skip_memory_metrics", "project", "trackio_space_id",
    "trackio_bucket_id", "trackio_static_space_id",
})


# --- the run signature -----------------------------------------------------------------------------------------


def examples_digest(examples: Sequence[Example] | None) -> str | None:
    """sha256 of the examples' ids, texts and targets: what the model sees, whichever file it came from."""
    if examples is None:
        return None
    rows = [[e.id, e.premise, e.hypothesis, [float(x) for x in e.distribution]] for e in examples]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def run_signature(script: FinetuneArguments, training_args, data: FinetuneData) -> dict:
    """Flat settings + data content hashes of a run (flat, so a refusal can name the one key that changed)."""
    training = {k: v for k, v in training_args.to_dict().items() if k not in _REPORTING_FIELDS}
    return {
        **dataclasses.asdict(script),
        "model_name_or_path": script.model_path,
        **json.loads(json.dumps(training, default=str)),
        **{f"{name}_sha256": examples_digest(getattr(data, name))
           for name in ("train", "selection", "dev", "test", "first_stage", "ood")},
    }


def check_run_folder(output_dir: str | Path, signature: dict, *, record: bool = True) -> None:
    """Refuse (one line) a folder that holds another run, or run output without a signature to match it against;
    with `record`, store `signature` on first use."""
    output_dir = Path(output_dir)
    path = output_dir / SIGNATURE_FILE
    if not path.exists() and output_dir.is_dir():
        held = [p.name for p in output_dir.iterdir()
                if p.name in (METRICS_FILE, "first_stage", "best_model") or p.name.startswith("checkpoint-")]
        if held:
            raise DataError(f"holds run output ({min(held)}) but no {SIGNATURE_FILE} to match it to these "
                            "settings: use a new output_dir", path=str(output_dir))
    check_run_signature(path, signature, record=record)


# --- training --------------------------------------------------------------------------------------------------


def soft_cross_entropy(logits, targets):
    """Mean over the batch of -sum_k p_k log softmax(z)_k (torch's cross_entropy accepts probability targets)."""
    import torch.nn.functional as F

    return F.cross_entropy(logits.float(), targets.to(logits.device).float())


class SoftLabelTrainer(Trainer):
    """`transformers.Trainer` with the loss replaced by soft cross-entropy."""

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


def _load_model(path: str, num_labels: int = 3):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
    model.config.id2label = dict(enumerate(NLI.labels))
    model.config.label2id = {label: k for k, label in enumerate(NLI.labels)}
    return model, tokenizer


def _first_stage(model, tokenizer, script: FinetuneArguments, examples: list[Example], training_args, log) -> None:
    """Hard-label training on the user's NLI file; its result is saved (atomically) so a restart skips it."""
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

    done = Path(training_args.output_dir) / "first_stage" / "final"
    if (done / "config.json").exists():
        log(f"first stage already done, loading {done}")
        model.load_state_dict(AutoModelForSequenceClassification.from_pretrained(done).state_dict())
        return
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
    trainer = SoftLabelTrainer(
        model=model,
        args=args,
        train_dataset=to_dataset(examples, tokenizer, script.max_length),
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
    )
    trainer.train()
    partial = done.with_name(".final.partial")
    shutil.rmtree(partial, ignore_errors=True)
    trainer.save_model(str(partial))
    partial.rename(done)


def predict(trainer, examples: Sequence[Example], tokenizer, max_length: int) -> np.ndarray:
    """Predicted distributions (softmax of the logits), one row per example."""
    return softmax_logits(trainer.predict(to_dataset(examples, tokenizer, max_length)).predictions)


def _checkpoint_step(path: str | None) -> int | None:
    if not path:
        return None
    try:
        return int(Path(path).name.rsplit("-", 1)[-1])
    except ValueError:
        return None


def finetune(script: FinetuneArguments, training_args, log=print, callbacks: Sequence = ()) -> dict:
    """Train on `script.source`, keep the best checkpoint by dev macro-F1, score dev and test once; return metrics.

    With `script.eval_only`, nothing is trained: `script.model_name_or_path` is scored as it is (out-of-distribution
    scoring of an already fine-tuned classifier); the constants still use `script.source`'s training mean.
    Writes into `training_args.output_dir`: `run_signature.json`, checkpoints (a killed run restarted with the same
    signature resumes from the last complete one), `best_model/` (the selected model), `predictions_{dev,test}.jsonl`
    (distribution files), `training_curves.png`, `log_history.json`, `run_manifest.json` and, last, `metrics.json`.
    `callbacks` are extra `TrainerCallback`s for the main training stage.
    """
    from transformers import DataCollatorWithPadding, set_seed

    from capo.manifest import write_manifest

    # All input is read and checked before anything is written, so bad input leaves no output folder behind.
    data = load_finetune_data(script, load_nli341())
    output_dir = Path(training_args.output_dir)
    check_run_folder(output_dir, run_signature(script, training_args, data))  # creates output_dir on first use

    set_seed(training_args.seed)  # the new classification head is initialised from this seed
    model, tokenizer = _load_model(script.model_path)
    if data.first_stage and not script.eval_only:
        _first_stage(model, tokenizer, script, data.first_stage, training_args, log)

    trainer = SoftLabelTrainer(
        model=model,
        args=training_args,
        train_dataset=to_dataset(data.train, tokenizer, script.max_length),
        eval_dataset=to_dataset(data.selection, tokenizer, script.max_length),
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
        callbacks=list(callbacks),
    )
    if not script.eval_only:
        last = last_complete_checkpoint(output_dir)
        if last:
            log(f"resuming from {last}")
        log(f"training on {source_name(script.source)}: {len(data.train)} items; "
            f"selecting on {len(data.selection)} dev items")
        trainer.train(resume_from_checkpoint=last)
        trainer.save_model(str(output_dir / "best_model"))  # the selected model, loadable by from_pretrained

    dev_pred = predict(trainer, data.dev, tokenizer, script.max_length)
    test_pred = predict(trainer, data.test, tokenizer, script.max_length)  # scored once, with the selected model
    metrics = {
        "source": source_name(script.source),
        "source_arg": script.source,
        "model": script.model_path,
        "eval_only": script.eval_only,
        "seed": training_args.seed,
        "n_train": len(data.train),
        "n_selection_dev": len(data.selection),
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "best_step": _checkpoint_step(trainer.state.best_model_checkpoint),
        "selection_metric": training_args.metric_for_best_model,
        "best_selection_value": trainer.state.best_metric,
        "global_step": trainer.state.global_step,
        "dev": score([e.distribution for e in data.dev], dev_pred),
        "test": score([e.distribution for e in data.test], test_pred),
        "constants": {"dev": constant_scores(data.train, data.dev), "test": constant_scores(data.train, data.test)},
    }
    if data.ood is not None:
        ood_pred = predict(trainer, data.ood, tokenizer, script.max_length)
        metrics["ood"] = {"file": script.ood_test_file, **score([e.distribution for e in data.ood], ood_pred)}
    write_distributions(output_dir / "predictions_dev.jsonl", {e.id: p for e, p in zip(data.dev, dev_pred)})
    write_distributions(output_dir / "predictions_test.jsonl", {e.id: p for e, p in zip(data.test, test_pred)})
    if not script.eval_only:
        plot_training_curves(trainer.state.log_history, output_dir / "training_curves.png",
                             title=f"{metrics['source']} seed {training_args.seed}")
        write_json(output_dir / "log_history.json", trainer.state.log_history)
    data_files = [p for p in (script.source, script.first_stage_file, script.ood_test_file) if p and Path(p).exists()]
    write_manifest(output_dir, config={"script": script, "training": training_args}, seed=training_args.seed,
                   data_files=data_files + [str(CHAOS_DIR / "dev.json"), str(CHAOS_DIR / "test.json")])
    write_json(output_dir / METRICS_FILE, metrics)
    return metrics
