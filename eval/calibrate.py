"""Calibrated MJDs: a temperature fitted by 5-fold cross-fitting against the HJDs, reported beside T = 20 and T = 1.

    python eval/calibrate.py --raw runs/mjd/raw_scores.jsonl --human runs/mjd/human_chaosnli.jsonl \\
        --output runs/mjd/mjd_calibrated.jsonl [--report runs/mjd/calibration.json]

The raw scores come from `recipes/mjd.py --save_raw_scores true`. Prints KL, JS distance, TVD and distance
correlation for T = 1, T = 20 and the cross-fitted T, with the T of each fold, and the share of prompts whose top
letter is A, B or C (a position bias the option-order averaging cancels). The human file must have a distribution
for every item of the raw file; with --allow_partial true the items it has are calibrated, and the report's
`items` and `raw_items` say how many of how many. Library: `capo.evaluate.distributions.calibration.calibrate`.
"""

from __future__ import annotations

import json

from capo.cli import parse_arguments, run_main
from capo.evaluate.distributions.calibration import CalibrateArguments, calibrate, format_report


def parse(argv: list[str] | None = None) -> tuple[CalibrateArguments]:
    return parse_arguments((CalibrateArguments,), argv, prog="eval/calibrate.py", description=__doc__)


@run_main
def main(argv: list[str] | None = None) -> dict:
    (args,) = parse(argv)
    report = calibrate(args)
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    return report


if __name__ == "__main__":
    main()
