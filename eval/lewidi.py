r"""LeWiDi 2025 on VariErrNLI (ven) and Paraphrase (par): predictions, official scores, Codabench files.

    python eval/lewidi.py predict --dataset ven --split test --baseline most_frequent --output runs/lw/ven_mf.jsonl
    python eval/lewidi.py predict --dataset par --split dev --baseline random --seed 0 --output runs/lw/par_rand.jsonl
    python eval/lewidi.py predict --dataset ven --split test --decision_split dev --model models/smollm2-135m-instruct \
        --explainers 'runs/sft/{task}/{annotator}' --output runs/lw/ven_sft_test.jsonl
    python eval/lewidi.py score --dataset ven --split test --predictions runs/lw/ven_mf.jsonl [--soft SOFT.jsonl] \
        [--output runs/lw/ven_mf_scores.json]
    python eval/lewidi.py export --dataset ven --split VariErrNLI_test_clear.json --predictions P.jsonl \
        --output_dir runs/lw/submission [--naming short]

predict  writes one row per (item, annotator) of the split ({"id", "annotator", "labels"} for ven, {"id",
         "annotator", "label"} for par); labels in the split file may be absent. Baselines are fitted on the LeWiDi
         train split. With --model, an LLM scores every label option for every (item, annotator): each annotator's
         explainer (--explainers with {annotator}), one conditioned explainer (a template without {annotator}) or
         the base model (no --explainers); the VEN threshold / Par rule is the one best on --decision_split (dev),
         cross-fitted over item folds when the split is the decision split itself (no item's labels choose its
         own decision), and soft labels (aggregated, and mean probabilities) and probabilities are written beside
         --output.
         Adapters whose run manifest lists items of the split are refused: train them on LeWiDi train. An adapter
         without a run manifest (a hub adapter, a copied folder) is refused too, unless --allow_unchecked_adapters
         true (the report then names it: unchecked_adapters). It prints a JSON report (with --model: the decision,
         how it was fitted and, on a labelled split, the scores); --report_output also writes it to a file.
score    prints {"perspectivist", "soft", ...} (lower is better) against a labelled split (--output: also to a JSON
         file); a prediction file that misses an (item, annotator) of the split is refused, naming the first missing
         pair.
export   writes <Dataset>_test_soft.tsv and <Dataset>_test_pe.tsv (one `key<TAB>[...]` line per item) and a flat
         res.zip of every submission file in --output_dir.
File formats and sources: capo/lewidi/ (the LLM predictor: capo/lewidi/explainers.py). Each command's flags follow.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads slow shared CPUs 10-25x

from capo.cli import ArgumentParser, run_main
from capo.errors import DataError
from capo.lewidi.commands import COMMANDS, RUN


def make_parser(command: str) -> ArgumentParser:
    """The parser of one command: its argument dataclass, named as the user types it."""
    parser = ArgumentParser((COMMANDS[command],))  # TrlParser whose complaints are one-line errors
    parser.prog = f"eval/lewidi.py {command}"
    parser.description = COMMANDS[command].__doc__
    return parser


def parse(argv: list[str] | None = None) -> tuple[str, object]:
    """(command, its arguments) of `eval/lewidi.py COMMAND --flag value ...`; `--help` prints every command's flags
    and exits, as argparse does."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:  # a command is required: say which there are, in one line (--help prints them all)
        raise DataError(f"no command given (valid: {', '.join(COMMANDS)}; --help shows all three)")
    if argv[0] in ("-h", "--help"):
        print(__doc__)
        for command in COMMANDS:
            print(make_parser(command).format_help())
        raise SystemExit(0)
    if argv[0] not in COMMANDS:
        raise DataError(f"unknown command {argv[0]!r} (valid: {', '.join(COMMANDS)}; --help shows all three)")
    (args,) = make_parser(argv[0]).parse_args_and_config(args=argv[1:])
    return argv[0], args


@run_main
def main(argv: list[str] | None = None) -> dict:
    command, args = parse(argv)
    result = RUN[command](args)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
