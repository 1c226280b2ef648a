"""Build SFT rows (conversational prompt/completion) for one target annotator: an export and preview of what
`recipes/sft.py` trains on (it rebuilds the same rows itself; `capo.train.export`).

    python data_prep/build_sft.py --annotator A2 --task nli --output runs/data/sft_A2_nli.jsonl
        [--dataset varierr|lewidi-ven|lewidi-par|path/to/your.jsonl] [--split train] [--few_shot 0]
        [--valid peer_majority_not_self_corrected] [--preview 3 --model models/corpus-lm]
"""

from __future__ import annotations

from capo.cli import parse_arguments, run_main
from capo.train.export import SftExportArguments, export_sft_rows


def parse(argv: list[str] | None = None) -> tuple[SftExportArguments]:
    return parse_arguments((SftExportArguments,), argv)


@run_main
def main(argv: list[str] | None = None) -> list[dict]:
    (args,) = parse(argv)
    return export_sft_rows(args)


if __name__ == "__main__":
    main()
