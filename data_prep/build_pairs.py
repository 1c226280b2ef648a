"""Build CAPO preference pairs (prompt / chosen / rejected) for one target annotator: an export and preview of what
`recipes/capo.py` trains on (it rebuilds the same pairs itself; `capo.train.export`).

    python data_prep/build_pairs.py --annotator A2 --task nli --output runs/data/pairs_A2_nli.jsonl
        [--dataset varierr|lewidi-ven|lewidi-par|path/to/your.jsonl]
        [--rejected_from all|same_label|different_label] [--max_pairs_per_item 3]
        [--chosen_valid peer_majority_not_self_corrected] [--rejected_valid peer_majority_not_self_corrected]
        [--preview 3 --model models/corpus-lm]
"""

from __future__ import annotations

from capo.cli import parse_arguments, run_main
from capo.train.export import PairExportArguments, export_pairs


def parse(argv: list[str] | None = None) -> tuple[PairExportArguments]:
    return parse_arguments((PairExportArguments,), argv)


@run_main
def main(argv: list[str] | None = None) -> list[dict]:
    (args,) = parse(argv)
    return export_pairs(args)


if __name__ == "__main__":
    main()
