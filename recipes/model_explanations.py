"""Model explanations (ACL 2025): an LLM lists every explanation for each label of each item; the lists become the
label-free and label-guided (VariErr / MNLI label multisets) `first` / `longest` sets, in the released files' format.

    python recipes/model_explanations.py --config recipes/configs/model_explanations_tiny.yaml \\
        --output_dir runs/model_explanations/tiny
    python recipes/model_explanations.py --model meta-llama/Meta-Llama-3-8B-Instruct --dtype bfloat16 \\
        --output_dir runs/model_explanations/llama3

The output folder holds `generations.jsonl` (raw text and parsed list per item and label) and the sets
(`Label-Free-first.json`, `VariErr-Label-Guided-longest.json`, ...) that `capo.data.formats.mjd_files.load_model_explanations`
and the MJD recipe read. A killed run started again with the same arguments skips the finished shards.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from capo.cli import parse_arguments, run_main
from capo.generate.model_explanations import ModelExplanationArguments, run_model_explanations
from capo.io import check_model_path, check_output


def parse(argv: list[str] | None = None) -> tuple[ModelExplanationArguments]:
    return parse_arguments((ModelExplanationArguments,), argv)


@run_main
def main(argv: list[str] | None = None) -> dict:
    (args,) = parse(argv)
    check_output(args.output_dir, folder=True)
    check_model_path(args.model)
    summary = run_model_explanations(args)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
