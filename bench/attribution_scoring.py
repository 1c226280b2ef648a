"""Attribution scoring throughput: vocabulary projection at explanation positions only vs at every position, fp32 vs bf16.

    python bench/attribution_scoring.py --model models/smollm2-135m-instruct --items 12 [--json results/attr.json]

`capo.evaluate.behaviour.attribution.score_annotations` asks the model for logits only where some row predicts an explanation
token (`logits_to_keep` with those positions); the reference here projects and log-softmaxes every position, as the
scorer did before. Both score every annotation of the first N VariErr items, in the same batches; the report gives
seconds, sequences/s and the largest score difference between the two (they must agree to float rounding) and
between float32 and bfloat16 weights. The first row is the CPU's bf16 capability
(`capo.precision.precision_report`: emulated bf16 is 4-40x slower, so a bf16 timing means little without it).
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads slow shared CPUs 10-25x

from capo.cli import run_main


def all_positions_scores(model, tokenizer, items, batch_size: int = 16) -> list[float]:
    """Reference: the same length-normalised scores from logits at every position."""
    import torch

    from capo.data.schema import ANNOTATORS
    from capo.evaluate.behaviour.attribution import _explanation_mask

    encoded = [_explanation_mask(tokenizer, item, a.label, a.explanation)
               for item in items for a in item.annotations if a.annotator in ANNOTATORS]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    scores = []
    for start in range(0, len(encoded), batch_size):
        batch = encoded[start : start + batch_size]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in batch])
        attention = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in batch])
        mask = torch.tensor([m + [False] * (width - len(m)) for _, m in batch])[:, 1:]
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=attention).logits.float()
        logprobs = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
        scores.extend(((logprobs * mask).sum(1) / mask.sum(1).clamp(min=1)).tolist())
    return scores


@run_main
def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/smollm2-135m-instruct")
    parser.add_argument("--items", type=int, default=12)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from capo.data.formats.varierr import load_varierr
    from capo.evaluate.behaviour.attribution import score_annotations
    from capo.precision import precision_report

    items = load_varierr()[: args.items]
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    # fp32 vs bf16 is what this measures; which CPU kind timed it goes first
    rows, kept = [{"precision": precision_report("cpu"), "torch_threads": torch.get_num_threads()}], {}
    for dtype in ("float32", "bfloat16"):
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).eval()
        for variant in ("explanation positions", "every position"):
            start = time.perf_counter()
            if variant == "every position":
                scores = np.array(all_positions_scores(model, tokenizer, items))
            else:
                scores = np.array([s.score for s in score_annotations(model, tokenizer, items)])
            seconds = time.perf_counter() - start
            kept[(dtype, variant)] = scores
            rows.append({"dtype": dtype, "logits": variant, "sequences": len(scores), "seconds": round(seconds, 1),
                         "seq_per_s": round(len(scores) / seconds, 2)})
        diff = np.abs(kept[(dtype, "explanation positions")] - kept[(dtype, "every position")]).max()
        rows[-1]["max_diff_vs_explanation_positions"] = float(diff)
    rows.append({"bf16_vs_fp32_max_diff": float(np.abs(kept[("float32", "explanation positions")]
                                                        - kept[("bfloat16", "explanation positions")]).max())})
    for row in rows:
        print(json.dumps(row))
    if args.json:
        from capo.io import write_json

        write_json(args.json, rows)  # atomic, like every file the project writes
    return rows


if __name__ == "__main__":
    main()
