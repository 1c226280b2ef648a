"""Calibrated MJDs: a temperature fitted by 5-fold cross-fitting against the HJDs, reported beside T = 20 and T = 1.

    python eval/calibrate.py --raw runs/mjd/raw_scores.jsonl --human runs/mjd/human_chaosnli.jsonl \\
        --output runs/mjd/mjd_calibrated.jsonl

The raw scores come from `recipes/mjd.py --save_raw_scores true`. Prints KL, JS distance, TVD and distance
correlation for T = 1, T = 20 and the cross-fitted T, with the T of each fold, and the share of prompts whose top
letter is A, B or C (a position bias the option-order averaging cancels). The human file must have a distribution
for every item of the raw file; with --allow_partial true the items it has are calibrated, and the report's
`items` and `raw_items` say how many of how many.
"""

from __future__ import annotations

import json

import numpy as np
from transformers.hf_argparser import string_to_bool

from capo.cli import ArgumentParser, run_main
from capo.data.distributions import read_distributions, write_distributions
from capo.errors import DataError
from capo.evaluate.distributions.calibration import crossfit, mjd_at, read_raw_scores, top_letter_shares
from capo.evaluate.distributions.compare import covered
from capo.evaluate.distributions.metrics import distribution_report
from capo.io import check_output


@run_main
def main(argv: list[str] | None = None) -> dict:
    parser = ArgumentParser(description=__doc__)  # a bad flag or value: one line, not argparse's usage text
    parser.add_argument("--raw", required=True, help="raw_scores.jsonl of an MJD run")
    parser.add_argument("--human", required=True, help="human distribution JSONL (id, distribution)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="write the calibrated MJDs (id, distribution)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--allow_partial", type=string_to_bool, nargs="?", const=True, default=False,
                        help="calibrate the raw items that the human file has, when it lacks some")
    args = parser.parse_args(argv)
    if args.folds < 2:
        raise DataError(f"need at least 2 folds, got {args.folds}", field="--folds")
    if args.output:
        check_output(args.output)
    scores, raw = read_raw_scores(args.raw)
    human = read_distributions(args.human)
    ids = covered(scores, human, reference_name=args.raw, covering_name=args.human, allow_partial=args.allow_partial)
    if len(ids) < args.folds:
        raise DataError(f"only {len(ids)} items have both raw scores and a human distribution", path=args.raw)
    calibrated, temperatures = crossfit(ids, scores, human, folds=args.folds, seed=args.seed)
    h = np.array([human[i] for i in ids])
    rows = {f"T={t:g}": distribution_report(h, np.array([mjd_at(scores[i], t) for i in ids])) for t in (1.0, 20.0)}
    rows["T=cross-fitted"] = distribution_report(h, np.array([calibrated[i] for i in ids]))
    report = {"items": len(ids), "raw_items": len(scores), "fold_temperatures": temperatures,
              "top_letter_shares": top_letter_shares(raw), "rows": rows}
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"{len(ids)} of {len(scores)} items; fitted T per fold: {', '.join(f'{t:.2f}' for t in temperatures)}")
        shares = report["top_letter_shares"]
        print("prompts whose top letter is " + ", ".join(f"{k} {v:.3f}" for k, v in shares.items()))
        for name, r in rows.items():
            print(f"{name:>16}: " + ", ".join(f"{k} {v:.4f}" for k, v in r.items()))
    if args.output:
        write_distributions(args.output, calibrated)
    return report


if __name__ == "__main__":
    main()
