"""Build CAPO preference pairs (prompt / chosen / rejected) for one target annotator.

    python data_prep/build_pairs.py --annotator A2 --task nli --output runs/data/pairs_A2_nli.jsonl
        [--dataset varierr|lewidi-ven|lewidi-par|path/to/your.jsonl]
        [--rejected_from all|same_label|different_label] [--max_pairs_per_item 3]
        [--chosen_valid peer_majority_not_self_corrected] [--rejected_valid peer_majority_not_self_corrected]
        [--preview 3 --model models/corpus-lm]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared options live beside this script

from build_sft import add_common_arguments, check_common_arguments, finish

from capo.cli import ArgumentParser, run_main
from capo.data.datasets import load_task_data
from capo.train.pairs import DEFAULT_VALIDITY, REJECTED_FROM, capo_pairs


@run_main
def main(argv: list[str] | None = None) -> list[dict]:
    parser = ArgumentParser(description=__doc__)
    add_common_arguments(parser)
    parser.add_argument("--rejected_from", default="all", help=f"one of: {', '.join(REJECTED_FROM)}")
    parser.add_argument("--chosen_valid", default=DEFAULT_VALIDITY, help="validity predicate for chosen responses")
    parser.add_argument("--rejected_valid", default=DEFAULT_VALIDITY, help="validity predicate for rejected ones")
    parser.add_argument("--max_pairs_per_item", type=int, help="cap on pairs per item (sampled with --seed)")
    args = parser.parse_args(argv)
    check_common_arguments(args)
    data = load_task_data(args.task, args.dataset, args.split_seed)
    rows = capo_pairs(
        data.items(args.split), args.annotator, rejected_from=args.rejected_from, chosen_valid=args.chosen_valid,
        rejected_valid=args.rejected_valid, max_pairs_per_item=args.max_pairs_per_item, few_shot=args.few_shot,
        few_shot_pool=data.items("train"), seed=args.seed,
    )
    finish(rows, args)
    return rows


if __name__ == "__main__":
    main()
