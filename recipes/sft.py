"""SFT of a per-annotator explainer: TRL `SFTTrainer` + LoRA on one annotator's label-explanation history.

    accelerate launch recipes/sft.py --annotator A2 --config recipes/configs/sft.yaml
    python recipes/sft.py --annotator A2 --task paraphrase --config recipes/configs/sft_tiny.yaml
    python recipes/sft.py --annotator A2 --dataset my_items.jsonl --sft_valid any --config ...

Rows pass `--sft_valid` (default: the predicate CAPO's chosen side uses). The output's run_manifest.json records the
data set, its content hash, the split and the items trained on; generation and attribution hold those items out.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads slow shared CPUs 10-25x

from capo.cli import parse_arguments, run_main
from capo.io import check_model_path, check_output
from capo.memory import plan_training
from capo.train.explainers import (
    CapoArguments,
    ExplainerScriptArguments,
    quiet_checkpointing_rename,
    train_sft,
)


def parse(argv: list[str] | None = None) -> tuple:
    from trl import ModelConfig, SFTConfig

    quiet_checkpointing_rename()
    return parse_arguments((ExplainerScriptArguments, CapoArguments, SFTConfig, ModelConfig), argv)


@run_main
def main(argv: list[str] | None = None) -> dict:
    script_args, capo_args, training_args, model_args = parse(argv)
    check_output(capo_args.format(training_args.output_dir), folder=True)
    check_model_path(model_args.model_name_or_path)
    plan_training(training_args, model_args)  # on a GPU: a run that cannot fit stops here, before the model loads
    return train_sft(script_args, capo_args, training_args, model_args)


if __name__ == "__main__":
    main()
