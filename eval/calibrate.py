"""Calibrated MJDs: a temperature fitted by 5-fold cross-fitting against the HJDs, reported beside T = 20 and T = 1.

    python eval/calibrate.py --raw runs/mjd/raw_scores.jsonl --human runs/mjd/human_chaosnli.jsonl \\
        --output runs/mjd/mjd_calibrated.jsonl

The raw scores come from `recipes/mjd.py --save_raw_scores true`. Prints KL, JS distance, TVD and distance
correlation for T = 1, T = 20 and the cross-fitted T, with the T of each fold, and the share of prompts whose top
letter is A, B or C (a position bias the option-order averaging cancels).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from capo.cli import run_main
from capo.data.loaders import read_distributions, write_distributions
from capo.errors import DataError
from capo.evaluate.calibration import crossfit, label_scores, mjd_at, top_letter_shares
from capo.evaluate.metrics import distribution_report
from capo.io import iter_jsonl


@run_main
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", required=True, help="raw_scores.jsonl of an MJD run")
    parser.add_argument("--human", required=True, help="human distribution JSONL (id, distribution)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="write the calibrated MJDs (id, distribution)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.folds < 2:
        raise DataError(f"need at least 2 folds, got {args.folds}", field="--folds")
    raw = [row for _, row in iter_jsonl(args.raw)]
    scores = label_scores(raw)
    human = read_distributions(args.human)
    ids = [i for i in scores if i in human]
    if len(ids) < args.folds:
        raise DataError(f"only {len(ids)} items have both raw scores and a human distribution", path=args.raw)
    calibrated, temperatures = crossfit(ids, scores, human, folds=args.folds, seed=args.seed)
    h = np.array([human[i] for i in ids])
    rows = {f"T={t:g}": distribution_report(h, np.array([mjd_at(scores[i], t) for i in ids])) for t in (1.0, 20.0)}
    rows["T=cross-fitted"] = distribution_report(h, np.array([calibrated[i] for i in ids]))
    report = {"items": len(ids), "fold_temperatures": temperatures, "top_letter_shares": top_letter_shares(raw),
              "rows": rows}
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"{len(ids)} items; fitted T per fold: {', '.join(f'{t:.2f}' for t in temperatures)}")
        shares = report["top_letter_shares"]
        print("prompts whose top letter is " + ", ".join(f"{k} {v:.3f}" for k, v in shares.items()))
        for name, r in rows.items():
            print(f"{name:>16}: " + ", ".join(f"{k} {v:.4f}" for k, v in r.items()))
    if args.output:
        write_distributions(args.output, calibrated)
    return report


if __name__ == "__main__":
    main()
