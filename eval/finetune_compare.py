"""Fine-tune one encoder per (source, seed) and write the comparison table, constant predictors included.

    python eval/finetune_compare.py --sources chaosnli,varierr_dist,mnli_dist,mnli_onehot --seeds 2
    python eval/finetune_compare.py --sources chaosnli,runs/mjd/llama.jsonl --seeds 3 \\
        --config recipes/configs/finetune_paper.yaml --output_dir runs/ft_paper

Each run is `recipes/finetune.py` in its own process (its folder holds metrics, curves and a run manifest). A finished
run is reused only when its `run_signature.json` matches the run this invocation would start (same settings, same
data content); a folder holding a different run is refused in one line. So a killed comparison continues where it
stopped, and a changed setting never mixes old and new runs in one table. Arguments this script does not know are passed
to every run (e.g. `--max_steps 10`); `--config` is the runs' YAML config (recipes/finetune.py's). Writes
`comparison.md`, `comparison.csv` and `runs.json` into --output_dir. Constants on the same items: uniform, each
source's training mean, and always the ChaosNLI training mean. Library: `capo.evaluate.finetune.comparison`.
"""

from __future__ import annotations

from capo.cli import run_main
from capo.evaluate.finetune.comparison import CompareArguments, parse_compare_arguments, run_comparison


def parse(argv: list[str] | None = None) -> tuple[CompareArguments, list[str]]:
    return parse_compare_arguments(argv, prog="eval/finetune_compare.py", description=__doc__)


@run_main
def main(argv: list[str] | None = None) -> dict:
    args, passed_to_runs = parse(argv)
    return run_comparison(args, passed_to_runs)


if __name__ == "__main__":
    main()
