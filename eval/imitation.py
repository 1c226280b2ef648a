"""Judge-based attribution and aggregation-aware imitation of generated responses (the CAPO paper's study).

    python eval/imitation.py --task nli --generated sft=runs/gen/sft/generations.jsonl \\
        --generated capo=runs/gen/capo/generations.jsonl --output results/imitation_nli.json --plots results/cm

A trained judge (char n-grams + logistic regression; --features embedding for MiniLM) is fitted on the annotators'
training histories and applied to (a) the real held-out responses — the sanity check and the human ceiling — and
(b) every generated file. A record's target is its `target` field, else its `annotator` field when that is an
annotator id (A1..A4); records of the base model (no target) are attributed but have no target to imitate.
"""

from __future__ import annotations

from capo.cli import parse_arguments, run_main
from capo.evaluate.behaviour.imitation import ImitationArguments, run_imitation


def parse(argv: list[str] | None = None) -> tuple[ImitationArguments]:
    return parse_arguments((ImitationArguments,), argv, prog="eval/imitation.py", description=__doc__)


@run_main
def main(argv: list[str] | None = None) -> dict:
    (args,) = parse(argv)
    return run_imitation(args)


if __name__ == "__main__":
    main()
