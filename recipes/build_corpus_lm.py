"""Build the offline corpus LM (tokenizer + small Llama) that tests and the demo use in place of a hub model.

    python recipes/build_corpus_lm.py --output_dir models/corpus-lm [--size default|test] [--max_seconds 100]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads slow shared 2-core machines 10-25x

from capo.cli import ArgumentParser, run_main
from capo.io import check_output
from capo.models.corpus_lm import SIZES, build_corpus_lm, config_for


@run_main
def main(argv: list[str] | None = None) -> dict:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--output_dir", default="models/corpus-lm")
    parser.add_argument("--size", default="default", help=f"one of: {', '.join(SIZES)}")
    parser.add_argument("--max_seconds", type=float,
                        help="training time limit in seconds (default per size; size test has none)")
    parser.add_argument("--max_steps", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--no_bf16", action="store_true",
                        help="train in fp32 (default: bf16 autocast where the CPU computes bf16 natively)")
    args = parser.parse_args(argv)
    check_output(args.output_dir, folder=True)
    overrides = {k: v for k, v in (("max_seconds", args.max_seconds), ("max_steps", args.max_steps), ("seed", args.seed)) if v is not None}
    if args.no_bf16:
        overrides["bf16"] = False
    return build_corpus_lm(args.output_dir, config_for(args.size, **overrides))


if __name__ == "__main__":
    main()
