"""Compare distributions: the 341-item baselines against ChaosNLI, or any two distribution files.

    python eval/distributions.py --baselines [--json] [--plot out.png] [--csv out.csv] [--report out.json]
    python eval/distributions.py --human H.jsonl --model M.jsonl [--json] [--allow_partial true]

A model file must cover every item of the human file; with --allow_partial true one that covers part of them is
scored on those, and the report's `items` and `human_items` say how many of how many (--count_items true adds
`items` to every row). Library: `capo.evaluate.distributions.compare.compare_distributions`.
"""

from __future__ import annotations

import json

from capo.cli import parse_arguments, run_main
from capo.evaluate.distributions.compare import DistributionsArguments, compare_distributions, format_table


def parse(argv: list[str] | None = None) -> tuple[DistributionsArguments]:
    return parse_arguments((DistributionsArguments,), argv, prog="eval/distributions.py", description=__doc__)


@run_main
def main(argv: list[str] | None = None) -> dict:
    (args,) = parse(argv)
    report = compare_distributions(args)
    print(json.dumps(report, indent=2) if args.json else format_table(report, list(next(iter(report.values())))))
    return report


if __name__ == "__main__":
    main()
