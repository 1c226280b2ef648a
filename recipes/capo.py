"""CAPO (Cross-Annotator Preference Optimization) of a per-annotator explainer: TRL `DPOTrainer` + LoRA on pairs
that prefer the target annotator's response over another annotator's valid response on the same item.

    accelerate launch recipes/capo.py --annotator A2 --config recipes/configs/capo.yaml
    python recipes/capo.py --annotator A2 --config recipes/configs/capo_tiny.yaml [--init_from base]

By default training starts from the target's SFT adapter (`--sft_adapter`, default runs/sft/{task}/{annotator}),
which is then also the reference policy.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

if __name__ == "capo":
    # A script in recipes/ (this one included) ran `import capo` and found this file first, because a script's own
    # folder leads sys.path. Hand it the library package instead, so the recipe may keep the name.
    _here = Path(__file__).resolve().parent
    _saved = sys.path[:]
    del sys.modules["capo"]
    sys.path = [p for p in sys.path if Path(p or ".").resolve() != _here]
    try:
        sys.modules["capo"] = importlib.import_module("capo")
    finally:
        sys.path = _saved
else:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads slow shared CPUs 10-25x

    from capo.cli import parse_arguments, run_main
    from capo.io import check_model_path, check_output
    from capo.train.explainers import CapoArguments, ExplainerScriptArguments, train_capo

    def parse(argv: list[str] | None = None) -> tuple:
        from trl import DPOConfig, ModelConfig

        return parse_arguments((ExplainerScriptArguments, CapoArguments, DPOConfig, ModelConfig), argv)

    @run_main
    def main(argv: list[str] | None = None) -> dict:
        script_args, capo_args, training_args, model_args = parse(argv)
        check_output(capo_args.format(training_args.output_dir), folder=True)
        check_model_path(model_args.model_name_or_path)
        if script_args.init_from == "sft":  # the SFT adapter is the start point: missing -> say so before loading
            check_model_path(capo_args.format(script_args.sft_adapter), kind="adapter",
                             hint=f"train it first with recipes/sft.py --annotator {capo_args.annotator} "
                                  f"--task {capo_args.task}, or pass --init_from base")
        return train_capo(script_args, capo_args, training_args, model_args)

    if __name__ == "__main__":
        main()
