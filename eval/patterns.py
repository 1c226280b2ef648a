"""Pattern analysis: can the annotators be told apart from their real explanations (single vs groups of k)?

    python eval/patterns.py --dataset varierr --output results/patterns_nli.json
    python eval/patterns.py --dataset lewidi-par-train --dataset lewidi-par-dev --features char --ks 1 4 16

Out-of-fold predictions from item-grouped cross-fitting; raw and input-content-reduced texts; a control with the
annotator names shuffled within items (it must land at chance). Prints a markdown table; --output writes JSON.
"""

from __future__ import annotations

from capo.cli import parse_arguments, run_main
from capo.evaluate.behaviour.patterns import PatternsArguments, run_patterns


def parse(argv: list[str] | None = None) -> tuple[PatternsArguments]:
    return parse_arguments((PatternsArguments,), argv, prog="eval/patterns.py", description=__doc__)


@run_main
def main(argv: list[str] | None = None) -> list[dict]:
    (args,) = parse(argv)
    return run_patterns(args)


if __name__ == "__main__":
    main()
