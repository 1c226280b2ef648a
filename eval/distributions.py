"""Compare distributions: the 341-item baselines against ChaosNLI, or any two distribution files.

    python eval/distributions.py --baselines [--json] [--plot out.png] [--csv out.csv]
    python eval/distributions.py --human H.jsonl --model M.jsonl [--json] [--allow_partial true]

A model file must cover every item of the human file; with --allow_partial true one that covers part of them is
scored on those, and the report's `items` and `human_items` say how many of how many.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from transformers.hf_argparser import string_to_bool

from capo.cli import ArgumentParser, run_main
from capo.data.distributions import read_distributions
from capo.errors import DataError
from capo.evaluate.distributions.compare import (
    baseline_distributions,
    baseline_report,
    format_table,
    join,
    ternary_plot,
)
from capo.evaluate.distributions.metrics import distribution_report
from capo.io import atomic_write_text, check_output


@run_main
def main(argv: list[str] | None = None) -> dict:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--baselines", action="store_true", help="score the 341-item baselines against ChaosNLI")
    parser.add_argument("--human", help="human distribution JSONL (id, distribution)")
    parser.add_argument("--model", help="model distribution JSONL (id, distribution)")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of a table")
    parser.add_argument("--classification", action="store_true", help="add accuracy/F1 against argmax(human), soft CE")
    parser.add_argument("--plot", help="write a ternary plot (PNG)")
    parser.add_argument("--csv", help="also write the table as CSV")
    parser.add_argument("--allow_partial", type=string_to_bool, nargs="?", const=True, default=False,
                        help="score a model file that covers only some of the human items (on those; the report "
                             "records how many)")
    args = parser.parse_args(argv)
    for path in (args.csv, args.plot):
        if path:
            check_output(path)

    if args.baselines == bool(args.human or args.model):
        raise DataError("give either --baselines, or both --human and --model")
    if args.baselines:
        dists = baseline_distributions()
        report = baseline_report(dists, classification=args.classification)
        plotted = {k: v for k, v in dists.items() if k != "human"} if args.plot else None
    else:
        if not (args.human and args.model):
            raise DataError("--human and --model go together")
        human, model = read_distributions(args.human), read_distributions(args.model)
        ids, h, m = join(human, model, human_name=args.human, model_name=args.model, allow_partial=args.allow_partial)
        report = {Path(args.model).stem: distribution_report(h, m, classification=args.classification)}
        if args.allow_partial:  # the numbers rest on these many of the human items
            next(iter(report.values())).update(items=len(ids), human_items=len(human))
        plotted = {"human": human, Path(args.model).stem: model} if args.plot else None

    columns = list(next(iter(report.values())))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_table(report, columns))
    if args.csv:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["source", *columns])
        for name, row in report.items():
            writer.writerow([name, *(row[c] if isinstance(row[c], int) else f"{row[c]:.6f}" for c in columns)])
        atomic_write_text(args.csv, buffer.getvalue())
    if plotted is not None:
        ternary_plot(plotted, args.plot, title="341 VariErr items: [E, N, C] distributions")
    return report


if __name__ == "__main__":
    main()
