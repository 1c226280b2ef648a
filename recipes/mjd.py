"""Model judgment distributions (the EMNLP 2024 MJD method): next-token scores of the option letters A/B/C, averaged
over the 6 option orders and the explanation orders, one [E, N, C] distribution per item.

    python recipes/mjd.py --config recipes/configs/mjd_tiny.yaml --output_dir runs/mjd_tiny
    accelerate launch --num_processes 2 recipes/mjd.py --config recipes/configs/mjd.yaml --output_dir DIR  # 2 GPUs
    accelerate launch --multi_gpu --num_processes 2 recipes/mjd.py --config recipes/configs/mjd_tiny.yaml \
        --output_dir DIR   # 2 CPU processes (gloo); torchrun --nproc_per_node 2 works too
    python eval/distributions.py --human DIR/human_chaosnli.jsonl --model DIR/mjd.jsonl

Writes DIR/mjd.jsonl (`id`, `distribution`), DIR/human_chaosnli.jsonl (when the items carry ChaosNLI),
optionally DIR/raw_scores.jsonl, DIR/run_manifest.json, and the run engine's DIR/run_config.json and DIR/shards/
(`capo.runner`). A killed run restarted with the same arguments resumes (a changed model folder, data file or
option is refused); under `accelerate launch` / `torchrun` shards are spread over the processes (fixed shards of
`items_per_chunk` items, so the merged file is identical to a one-process run).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads slow shared CPUs 10-25x

from capo.cli import parse_arguments, run_main
from capo.errors import DataError
from capo.io import check_model_path, check_output
from capo.memory import Inference, check_memory
from capo.mjd.run import MJDScriptArguments, run_mjd


def parse(argv: list[str] | None = None) -> tuple[MJDScriptArguments]:
    (args,) = parse_arguments((MJDScriptArguments,), argv)
    if args.explanations == "none" and args.mode != "none":  # else every prompt fails after the model loaded
        raise DataError(f"'none' leaves nothing to show in mode {args.mode!r}: use --mode none, or explanations "
                        "human or a file", field="explanations")
    return (args,)


@run_main
def main(argv: list[str] | None = None) -> dict:
    (args,) = parse(argv)
    if args.output_dir:  # required: run_mjd says so
        check_output(args.output_dir, folder=True)
    check_model_path(args.model_name_or_path)
    if args.engine == "prefix_cache" or args.backend == "hf":  # on a GPU, before the model loads (vLLM sizes its own)
        check_memory(args.model_name_or_path, lambda: Inference.for_mjd(args))
    return run_mjd(args)


if __name__ == "__main__":
    main()
