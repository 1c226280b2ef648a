"""Pattern analysis: can the annotators be told apart from their real explanations (single vs groups of k)?

    python eval/patterns.py --dataset varierr --output results/patterns_nli.json
    python eval/patterns.py --dataset lewidi-par-train --dataset lewidi-par-dev --features char --ks 1 4 16

Out-of-fold predictions from item-grouped cross-fitting; raw and input-content-reduced texts; a control with the
annotator names shuffled within items (it must land at chance). Prints a markdown table; --output writes JSON.
"""

from __future__ import annotations

import json
import time

from capo.cli import ArgumentParser, run_main
from capo.data.registry import load_items
from capo.errors import DataError
from capo.evaluate.behaviour.patterns import FEATURES, pattern_table, responses
from capo.io import atomic_write_text, check_output


def markdown(table: list[dict]) -> str:
    lines = ["| features | text | annotators | k | groups | accuracy | 95% CI | chance |", "|---|---|---|---:|---:|---:|---|---:|"]
    for r in table:
        lines.append(f"| {r['features']} | {'reduced' if r['reduced'] else 'raw'} | {r['annotators']} | {r['k']} | "
                     f"{r['groups']} | {r['accuracy']:.3f} | {r['ci_low']:.3f}–{r['ci_high']:.3f} | {r['chance']:.2f} |")
    return "\n".join(lines)


@run_main
def main(argv: list[str] | None = None) -> list[dict]:
    parser = ArgumentParser(description=__doc__)  # a bad flag or value: one line, not argparse's usage text
    parser.add_argument("--dataset", action="append", required=True,
                        help="shipped data set name or path; repeat to pool (e.g. lewidi-par-train, lewidi-par-dev)")
    parser.add_argument("--features", nargs="+", default=list(FEATURES), choices=FEATURES)
    parser.add_argument("--ks", nargs="+", type=int, default=[1, 2, 4, 8, 16], help="group sizes")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no_control", action="store_true", help="skip the shuffled-annotator control")
    parser.add_argument("--output", help="write the table as JSON")
    args = parser.parse_args(argv)
    if any(k < 1 for k in args.ks):
        raise DataError(f"group sizes must be at least 1, got {args.ks}", field="--ks")
    if args.folds < 2:
        raise DataError(f"need at least 2 folds, got {args.folds}", field="--folds")
    if args.output:
        check_output(args.output)  # now, not after minutes of cross-fitting
    rows = [r for name in args.dataset for r in responses(load_items(name))]
    start = time.perf_counter()
    table = pattern_table(rows, kinds=args.features, ks=args.ks, seed=args.seed, folds=args.folds,
                          control=not args.no_control)
    print(markdown(table))
    print(f"{len(rows)} responses, {len({r.item_id for r in rows})} items, {time.perf_counter() - start:.0f} s")
    if args.output:
        atomic_write_text(args.output, json.dumps({"datasets": args.dataset, "seed": args.seed, "table": table},
                                                  indent=1) + "\n")
    return table


if __name__ == "__main__":
    main()
