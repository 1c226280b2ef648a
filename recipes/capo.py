"""CAPO (Cross-Annotator Preference Optimization) of a per-annotator explainer: TRL `DPOTrainer` + LoRA on pairs
that prefer the target annotator's response over another annotator's valid response on the same item.

    accelerate launch recipes/capo.py --annotator A2 --config recipes/configs/capo.yaml
    python recipes/capo.py --annotator A2 --config recipes/configs/capo_tiny.yaml [--init_from base]

By default training starts from the target's SFT adapter (`--sft_adapter`, default runs/sft/{task}/{annotator}),
which is then also the reference policy. When that adapter is missing it is trained first, as recipes/sft.py would
with `--sft_config` (the SFT recipe's config: its training options; model, LoRA, data and mixed-precision options are
this run's).
"""

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

    from dataclasses import dataclass, field

    from capo.cli import parse_arguments, run_main
    from capo.errors import DataError
    from capo.io import check_adapter_weights, check_model_path, check_output
    from capo.memory import plan_training
    from capo.train.explainers import (
        CapoArguments,
        ExplainerScriptArguments,
        check_training_options,
        quiet_checkpointing_rename,
        train_capo,
        train_sft,
    )

    @dataclass  # real (not string) annotations: tests load this file as a module that is not in sys.modules
    class SftFirstArguments:
        """How the SFT adapter that CAPO starts from is trained when it is missing."""

        sft_config: str | None = field(
            default=None,
            metadata={"help": "SFT recipe config (e.g. recipes/configs/sft.yaml) for training a missing SFT adapter; "
                              "default: the SFT recipe's defaults"},
        )

    def parse(argv: list[str] | None = None) -> tuple:
        from trl import DPOConfig, ModelConfig

        quiet_checkpointing_rename()
        parsed = parse_arguments((ExplainerScriptArguments, CapoArguments, DPOConfig, ModelConfig, SftFirstArguments),
                                 argv)
        if parsed[0].shared_prefix:  # refuse DPOConfig options the packed trainer lacks before anything is trained
            from capo.train.packed import check_options

            check_options(parsed[2])
        return parsed

    def train_missing_sft_adapter(script_args, capo_args, training_args, model_args, sft_first) -> None:
        """init_from sft without an adapter: train it with the SFT recipe's entry point (resumable), then go on.
        It runs in this process, whose accelerate state admits one mixed precision: this run's bf16/fp16 apply."""
        from accelerate import PartialState
        from trl import ModelConfig, SFTConfig

        adapter = Path(capo_args.format(script_args.sft_adapter))
        if (script_args.init_from != "sft" or (adapter / "adapter_config.json").exists()
                or not model_args.model_name_or_path):  # no model: train_capo says so in one line
            return
        if sft_first.sft_config is not None and not Path(sft_first.sft_config).is_file():
            raise DataError("SFT config not found", path=sft_first.sft_config, field="sft_config")
        state = PartialState()
        if state.is_main_process:
            print(f"no SFT adapter for {capo_args.annotator} ({capo_args.task}) at {adapter}: training it first "
                  f"(recipes/sft.py, config {sft_first.sft_config or 'defaults'})", file=sys.stderr, flush=True)
        argv = ["--config", sft_first.sft_config] if sft_first.sft_config else []
        sft_script, _, sft_args, _ = parse_arguments(
            (ExplainerScriptArguments, CapoArguments, SFTConfig, ModelConfig),
            [*argv, "--output_dir", script_args.sft_adapter, "--resume_from_checkpoint", "true",
             "--bf16", str(training_args.bf16), "--fp16", str(training_args.fp16)])
        train_sft(sft_script, capo_args, sft_args, model_args)
        state.wait_for_everyone()  # every rank loads the adapter that rank 0 has just written

    @run_main
    def main(argv: list[str] | None = None) -> dict:
        script_args, capo_args, training_args, model_args, sft_first = parse(argv)
        check_output(capo_args.format(training_args.output_dir), folder=True)
        check_model_path(model_args.model_name_or_path)
        if script_args.init_from == "sft":  # an SFT adapter folder without weights: one line, before any model loads
            check_adapter_weights(capo_args.format(script_args.sft_adapter))
        check_training_options(capo_args, training_args, model_args)  # this run's values, before any SFT-first
        # on a GPU: a run that cannot fit stops here, before the model loads
        plan_training(training_args, model_args, preference=True, shared_prefix=script_args.shared_prefix)
        train_missing_sft_adapter(script_args, capo_args, training_args, model_args, sft_first)
        return train_capo(script_args, capo_args, training_args, model_args)

    if __name__ == "__main__":
        main()
