"""Fit a perspectivist predictor on a LeWiDi 2025 train split and write per-annotator predictions, soft labels and
Codabench files that `eval/lewidi.py score` / `export` read: `--predictor heads` (the default: per-annotator models
on fixed MiniLM pair features, `capo.lewidi.heads`, about a minute), `--predictor encoder` (one fine-tuned MiniLM
with an annotator token in the input, `capo.lewidi.perspectivist`), `--predictor encoder_ann` (MiniLM + a learned
annotator embedding, an ordinal head for Par, `capo.lewidi.annotator_encoder`) or `--predictor stack` (heads and
encoder_ann pooled with a weight chosen on train, `capo.lewidi.stack`).

    python recipes/perspectivist.py --config recipes/configs/perspectivist_cpu.yaml --dataset ven \
        --predict_splits dev,test --output_dir runs/persp/ven_s0 --seed 0
    python recipes/perspectivist.py --config recipes/configs/perspectivist_cpu.yaml --dataset par \
        --predictor encoder --output_dir runs/persp/par_enc_s0 --num_train_epochs 5
    python recipes/perspectivist.py --config recipes/configs/perspectivist_cpu.yaml --dataset par \
        --predictor stack --output_dir runs/persp/par_stack_s0 --feature_cache runs/persp/features
    python eval/lewidi.py score --dataset ven --split test --predictions runs/persp/ven_s0/predictions_test.jsonl

Defaults are `capo.lewidi.perspectivist.CPU_TRAINING_DEFAULTS`; a `--config` YAML replaces them, and every flag (a
`PerspectivistArguments`, `EncoderAnnArguments` or `transformers.TrainingArguments` field) given on the command
line wins over both.
A killed run resumes from its last checkpoint when started again with the same arguments and output folder.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from transformers import TrainingArguments

from capo.cli import parse_arguments, run_main
from capo.io import check_output
from capo.lewidi.annotator_encoder import EncoderAnnArguments, run_encoder_ann
from capo.lewidi.heads import run_heads
from capo.lewidi.perspectivist import CPU_TRAINING_DEFAULTS, PerspectivistArguments, train_perspectivist
from capo.lewidi.stack import run_stack


def parse(argv: list[str] | None = None) -> tuple:
    return parse_arguments((PerspectivistArguments, EncoderAnnArguments, TrainingArguments), argv,
                           defaults=CPU_TRAINING_DEFAULTS)


@run_main
def main(argv: list[str] | None = None) -> dict:
    script, ann, training = parse(argv)
    check_output(training.output_dir, folder=True)
    if script.predictor in ("encoder_ann", "stack"):
        metrics = (run_encoder_ann if script.predictor == "encoder_ann" else run_stack)(script, ann, training)
    else:
        metrics = (run_heads if script.predictor == "heads" else train_perspectivist)(script, training)
    print(json.dumps({k: metrics[k] for k in ("dataset", "predictor", "seed", "decision", "splits")}, indent=2))
    return metrics


if __name__ == "__main__":
    main()
