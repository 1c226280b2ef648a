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

from capo.cli import run_main
from capo.train.explainers import CapoArguments, ExplainerScriptArguments, train_sft


def make_parser():
    from trl import ModelConfig, SFTConfig, TrlParser

    return TrlParser((ExplainerScriptArguments, CapoArguments, SFTConfig, ModelConfig))


@run_main
def main(argv: list[str] | None = None) -> dict:
    script_args, capo_args, training_args, model_args = make_parser().parse_args_and_config(argv)
    return train_sft(script_args, capo_args, training_args, model_args)


if __name__ == "__main__":
    main()
