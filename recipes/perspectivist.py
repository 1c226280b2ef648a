"""Fit a perspectivist predictor on a LeWiDi 2025 train split and write per-annotator predictions, soft labels and
Codabench files that `eval/lewidi.py score` / `export` read: `--predictor heads` (the default: per-annotator models
on fixed MiniLM pair features, `capo.lewidi.heads`, about a minute) or `--predictor encoder` (one fine-tuned MiniLM
with an annotator token in the input, `capo.lewidi.perspectivist`).

    python recipes/perspectivist.py --config recipes/configs/perspectivist_cpu.yaml --dataset ven \
        --predict_splits dev,test --output_dir runs/persp/ven_s0 --seed 0
    python recipes/perspectivist.py --config recipes/configs/perspectivist_cpu.yaml --dataset par \
        --predictor encoder --output_dir runs/persp/par_enc_s0 --num_train_epochs 5
    python eval/lewidi.py score --dataset ven --split test --predictions runs/persp/ven_s0/predictions_test.jsonl

Defaults are `capo.lewidi.perspectivist.CPU_TRAINING_DEFAULTS`; a `--config` YAML replaces them, and every flag
(a `PerspectivistArguments` or `transformers.TrainingArguments` field) given on the command line wins over both.
A killed run resumes from its last checkpoint when started again with the same arguments and output folder.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from transformers import TrainingArguments

from capo.cli import parse_arguments, run_main
from capo.io import check_output
from capo.lewidi.heads import run_heads
from capo.lewidi.perspectivist import CPU_TRAINING_DEFAULTS, PerspectivistArguments, train_perspectivist


def parse(argv: list[str] | None = None) -> tuple:
    return parse_arguments((PerspectivistArguments, TrainingArguments), argv, defaults=CPU_TRAINING_DEFAULTS)


@run_main
def main(argv: list[str] | None = None) -> dict:
    script, training = parse(argv)
    check_output(training.output_dir, folder=True)
    metrics = (run_heads if script.predictor == "heads" else train_perspectivist)(script, training)
    print(json.dumps({k: metrics[k] for k in ("dataset", "predictor", "seed", "decision", "splits")}, indent=2))
    return metrics


if __name__ == "__main__":
    main()
