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

    from capo.cli import run_main
    from capo.train.explainers import CapoArguments, ExplainerScriptArguments, train_capo

    def make_parser():
        from trl import DPOConfig, ModelConfig, TrlParser

        return TrlParser((ExplainerScriptArguments, CapoArguments, DPOConfig, ModelConfig))

    @run_main
    def main(argv: list[str] | None = None) -> dict:
        script_args, capo_args, training_args, model_args = make_parser().parse_args_and_config(argv)
        return train_capo(script_args, capo_args, training_args, model_args)

    if __name__ == "__main__":
        main()
