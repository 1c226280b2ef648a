"""Fine-tune a sequence-classification encoder on soft labels and score it on ChaosNLI dev/test.

    python recipes/finetune.py --source chaosnli --output_dir runs/ft/chaosnli
    python recipes/finetune.py --config recipes/configs/finetune_cpu.yaml --source path/to/mjd.jsonl \\
        --output_dir runs/ft/mjd --seed 1 --max_steps 10
    # out of distribution: score a fine-tuned classifier (a run's best_model/) on an ANLI-format test file
    python recipes/finetune.py --eval_only true --model_name_or_path runs/ft/chaosnli/best_model \
        --ood_test_file anli_r1_test.jsonl --output_dir runs/ft/chaosnli_anli_r1

Defaults are the papers' settings (`capo.evaluate.finetune.arguments.PAPER_TRAINING_DEFAULTS`); a `--config` YAML
replaces them, and every `transformers.TrainingArguments` field given on the command line wins over both. A killed
run resumes from its last checkpoint when started again with the same output folder and the same settings and data
(its `run_signature.json`); other settings are refused in one line.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from capo.cli import run_main
from capo.evaluate.finetune.arguments import parse_arguments
from capo.evaluate.finetune.trainer import finetune
from capo.io import check_model_path, check_output


def parse(argv: list[str] | None = None) -> tuple:
    return parse_arguments(argv)


@run_main
def main(argv: list[str] | None = None) -> dict:
    script, training = parse(argv)
    check_output(training.output_dir, folder=True)
    if script.model_name_or_path is not None:
        check_model_path(script.model_name_or_path)
    metrics = finetune(script, training)
    print(json.dumps({k: metrics[k] for k in ("source", "seed", "best_step", "dev", "test")}, indent=2))
    return metrics


if __name__ == "__main__":
    main()
