"""Per-annotator explanations for a set of items: one record per (item, annotator), sharded and resumable; with
--temperature T > 0, sampled: --num_samples N records per (item, annotator) (`sample` 0..N-1, --top_p, --seed).

    python recipes/generate.py --config recipes/configs/generate_tiny.yaml --output_dir runs/generate/tiny
    python recipes/generate.py --model meta-llama/Llama-3.1-8B-Instruct --dataset varierr --split test \\
        --adapters A1=runs/capo/nli/A1 A2=runs/capo/nli/A2 --dtype bfloat16 --output_dir runs/generate/llama
    accelerate launch --num_processes 4 recipes/generate.py --config ...   # items sharded across processes/GPUs
    torchrun --nproc_per_node 2 recipes/generate.py --config ...           # the same on CPU-only machines
    (on CPU-only machines `accelerate launch` needs `--multi_gpu` to start more than one process)
    python recipes/generate.py --config ... --temperature 1.0 --num_samples 5 --seed 0   # 5 sampled responses each

A killed run started again with the same arguments skips the finished shards and ends with exactly the records an
uninterrupted run writes (`generations.jsonl`), sampled ones included (seeded per shard from --seed). See
`capo.generate.explanations` for the output layout.

Items an adapter trained on (its run_manifest.json) are refused; so is an adapter without a run manifest (a hub
adapter, a folder copied without it), unless --allow_unchecked_adapters true, which the summary and the run's
manifest then record (unchecked_adapters).
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from capo.cli import parse_arguments, run_main
from capo.generate.explanations import GenerateArguments, parse_adapters, run_generation
from capo.io import check_model_path, check_output
from capo.memory import Inference, check_memory


def parse(argv: list[str] | None = None) -> tuple[GenerateArguments]:
    return parse_arguments((GenerateArguments,), argv)


@run_main
def main(argv: list[str] | None = None) -> dict:
    (args,) = parse(argv)
    check_output(args.output_dir, folder=True)
    check_model_path(args.model)
    for path in parse_adapters(args.adapters or []).values():
        check_model_path(path, kind="adapter")
    if args.backend == "hf":  # on a GPU, before the model loads (vLLM sizes its own KV cache)
        check_memory(args.model, lambda: Inference.for_generation(args))
    summary = run_generation(args)
    if summary["merged"]:
        print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
