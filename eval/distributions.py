"""Compare distributions: the 341-item baselines against ChaosNLI, or any two distribution files.

    python eval/distributions.py --baselines [--json] [--plot out.png] [--csv out.csv] [--report out.json]
    python eval/distributions.py --human H.jsonl --model M.jsonl [--json] [--allow_partial true]
    python eval/distributions.py --human RUN/human_chaosnli.jsonl --model RUN/mjd.jsonl --raw RUN/raw_scores.jsonl

Every table carries two constant predictors beside the scored file: `uniform` and `label_prior`, the mean HJD of
ChaosNLI dev (the vendored dev file, dev only) predicted for every item, scored on the same items with the same
metrics (--constants false leaves them out of a --human/--model table); the caption under the table says whether the
label prior is in-sample for the scored items (those that are ChaosNLI dev items). For an MJD run, --raw adds one row
per estimator variant computed from its raw per-prompt scores (p_norm, softmax at T=1 and T=20, and the log-space
average over option orders, a position-bias diagnostic); --mjd_variants true without --raw adds the same rows as
"n/a (no raw scores)". A model file must cover every item of the human file; with --allow_partial true one that
covers part of them is scored on those, and every row's `items` and `human_items` say how many of how many
(--count_items true adds `items` to every row). Library: `capo.evaluate.distributions.compare.compare_distributions`."""

from __future__ import annotations

import json

from capo.cli import parse_arguments, run_main
from capo.evaluate.distributions.compare import DistributionsArguments, compare_distributions, format_table


def parse(argv: list[str] | None = None) -> tuple[DistributionsArguments]:
    return parse_arguments((DistributionsArguments,), argv, prog="eval/distributions.py", description=__doc__)


@run_main
def main(argv: list[str] | None = None) -> dict:
    (args,) = parse(argv)
    notes: list[str] = []
    report = compare_distributions(args, notes)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_table(report, list(next(iter(report.values())))))
        print("\n" + " ".join(f"{note}." for note in notes))
    return report


if __name__ == "__main__":
    main()
