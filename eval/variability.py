"""Explanation variability (ACL 2025 measures): lexical and POS n-gram overlap, embedding similarity; within each
item's explanation set and against the item's inputs; human vs released-model vs generated explanations.

    python eval/variability.py --human nli341 \\
        --model_explanations Llama3=data/mjd/model_explanations/Llama3/Label-Free-first.json \\
        --generated A2-sft=runs/generate/tiny/generations.jsonl --output results/variability.json
    python eval/variability.py --human varierr --items generated --annotators A1 A2 \\
        --generated capo=runs/generate/tiny/generations.jsonl --human_output results/heldout_items.jsonl

Every source is measured on the items of the --human data set it covers; with --items generated, only on the
items the --generated files hold (the humans beside the explainers, item for item). POS measures need spaCy's
English pipeline; without it they are left out and the table says so.
"""

from __future__ import annotations

from capo.cli import parse_arguments, run_main
from capo.evaluate.behaviour.variability import VariabilityArguments, run_variability


def parse(argv: list[str] | None = None) -> tuple[VariabilityArguments]:
    return parse_arguments((VariabilityArguments,), argv, prog="eval/variability.py", description=__doc__)


@run_main
def main(argv: list[str] | None = None) -> dict:
    (args,) = parse(argv)
    return run_variability(args)


if __name__ == "__main__":
    main()
