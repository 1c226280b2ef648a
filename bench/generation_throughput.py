"""Generation throughput: per-annotator explanations batched vs one prompt at a time, several adapters in one run.

    python bench/generation_throughput.py --model models/smollm2-135m-instruct \\
        --adapters A1=runs/sft/nli/A1 A2=runs/sft/nli/A2 --limit 16 --batch_size 16 [--json results/gen.json]

Both variants run `capo.generate.explanations.run_generation` (the code of `recipes/generate.py`) on the same held-out
items, adapters, dtype and greedy decoding, each into a fresh folder; only `batch_size` differs. The time is the
generation loop's own (`Progress`: model loading excluded). Reports records/s and generated tokens/s, and how many
records the two variants answered differently (batching pads prompts on the left; in bf16 that can flip a greedy
token now and then). `--dtype auto` (default) is bf16 only where the device computes it natively, else fp32;
the setup records the dtype it resolved to and the device's bf16 capability (`capo.precision.precision_report`).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads slow shared CPUs 10-25x

from capo.cli import run_main


def _run(args, batch_size: int, folder: str) -> tuple[dict, list[dict]]:
    from capo.generate.explanations import GenerateArguments, run_generation

    options = GenerateArguments(model=args.model, adapters=args.adapters, limit=args.limit, dtype=args.dtype,
                                batch_size=batch_size, max_new_tokens=args.max_new_tokens, output_dir=folder,
                                shard_size=10_000,  # one shard: the loop, not the shard bookkeeping, is timed
                                allow_unchecked_adapters=args.allow_unchecked_adapters == "true")
    summary = run_generation(options)
    records = [json.loads(line) for line in Path(summary["merged"]).read_text().splitlines()]
    return summary["this_process"], records


@run_main
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="models/smollm2-135m-instruct")
    parser.add_argument("--adapters", nargs="+", required=True, help="NAME=PATH, two or more for the protocol")
    parser.add_argument("--limit", type=int, default=16, help="held-out items (records = items x adapters)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_new_tokens", type=int, default=96)
    parser.add_argument("--dtype", default="auto",
                        help="auto | float32 | bfloat16 | float16 (auto: bf16 where native, else fp32)")
    parser.add_argument("--json", help="write the results as JSON")
    parser.add_argument("--allow_unchecked_adapters", default="false", choices=("true", "false"),
                        help="true: use adapters without a run manifest (their training items are not checked)")
    args = parser.parse_args(argv)
    import torch

    from capo.precision import precision_report, resolve_dtype

    results, texts = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, batch_size in (("batched", args.batch_size), ("one_at_a_time", 1)):
            results[name], records = _run(args, batch_size, f"{tmp}/{name}")
            results[name]["batch_size"] = batch_size
            texts[name] = [record["raw"] for record in records]
    results["records_differing"] = sum(a != b for a, b in zip(texts["batched"], texts["one_at_a_time"], strict=True))
    results["speedup_records"] = round(results["batched"]["records_per_s"] / results["one_at_a_time"]["records_per_s"], 2)
    # The dtype as `run_generation` resolves it (auto -> bf16 or fp32) and why: a timing says what made it.
    results["setup"] = {"model": args.model, "adapters": args.adapters, "items": args.limit,
                        "dtype": resolve_dtype(args.dtype), "max_new_tokens": args.max_new_tokens,
                        "torch_threads": torch.get_num_threads(), "precision": precision_report()}
    print(json.dumps(results, indent=2))
    if args.json:
        from capo.io import write_json

        write_json(args.json, results)  # atomic, like every file the project writes
    return results


if __name__ == "__main__":
    main()
