"""CPU speed of SmolLM2-135M-Instruct in fp32 and bf16: letter scoring (forward) and greedy generation.

    python bench/smollm2_dtype.py --model models/smollm2-135m-instruct --prompts 8 --rounds 3 [--json out.json]

The same converted folder loaded with `dtype=float32` and `dtype=bfloat16` (rounds alternate the two, so load from
other jobs on a shared machine hits both alike); the chat-formatted VariErr NLI prompts of the first items.
Forward = `capo.generate.scoring.HFScorer` on the items' MJD prompts (no explanations, identity option order) in
one plain length-sorted pass (no prefix reuse); generate = greedy `generate` of `--new_tokens` tokens for the items'
SFT prompts (`capo.data.prompts`) in one left-padded batch. Reports the best time of each, and how often the two
dtypes agree on the argmax letter and on the generated text, with the CPU's bf16 capability
(`capo.precision.precision_report`: emulated bf16 is 4-40x slower, so a timing means little without it).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads slow shared CPUs 10-25x

from capo.cli import run_main

DTYPES = ("float32", "bfloat16")


@dataclass
class DtypeBenchArguments:
    model: str = field(default="models/smollm2-135m-instruct")
    prompts: int = field(default=8, metadata={"help": "number of VariErr NLI prompts"})
    new_tokens: int = field(default=48, metadata={"help": "greedy tokens generated per prompt"})
    rounds: int = field(default=3, metadata={"help": "alternating rounds; the best time of each is reported"})
    json: str | None = field(default=None, metadata={"help": "write the report as JSON"})


@run_main
def main(argv: list[str] | None = None) -> dict:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from capo.cli import ArgumentParser
    from capo.data.formats.varierr import load_varierr
    from capo.data.prompts import prompt_messages, render_chat
    from capo.generate.scoring import HFScorer
    from capo.mjd.estimate import OPTION_LETTERS, PromptSpec, user_message
    from capo.precision import precision_report

    (args,) = ArgumentParser((DtypeBenchArguments,)).parse_args_and_config(argv)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    items = load_varierr()[: args.prompts]
    chats = [render_chat(tokenizer, prompt_messages(item)) for item in items]
    letter_prompts = [render_chat(tokenizer, user_message(item, [], PromptSpec(item.id, (0, 1, 2))))
                      for item in items]
    models = {d: AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, d)).eval() for d in DTYPES}
    # Left padding, whatever the tokenizer's default: generation continues from each row's last column.
    batch = tokenizer(chats, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    best = {d: {"forward_s": float("inf"), "generate_s": float("inf")} for d in DTYPES}
    scores, texts = {}, {}
    for _ in range(args.rounds):
        for dtype, model in models.items():
            scorer = HFScorer(model, tokenizer, min_shared_tokens=None)  # None: no prefix reuse
            start = time.perf_counter()
            scores[dtype] = scorer.score_next_token(letter_prompts, OPTION_LETTERS)
            best[dtype]["forward_s"] = min(best[dtype]["forward_s"], time.perf_counter() - start)
            with torch.inference_mode():
                start = time.perf_counter()
                out = model.generate(**batch, max_new_tokens=args.new_tokens, do_sample=False)
                best[dtype]["generate_s"] = min(best[dtype]["generate_s"], time.perf_counter() - start)
            texts[dtype] = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    prompt_tokens = sum(len(ids) for ids in tokenizer(letter_prompts, add_special_tokens=False)["input_ids"])
    report = {
        "prompts": len(chats), "scored_prompt_tokens": prompt_tokens,
        "generation_prompt_tokens": int(batch["attention_mask"].sum()), "new_tokens": args.new_tokens,
        "torch_threads": torch.get_num_threads(), "precision": precision_report("cpu"), "times": best,
        "bf16_speedup": {k: best["float32"][k] / best["bfloat16"][k] for k in ("forward_s", "generate_s")},
        "argmax_letter_agreement": float(np.mean(scores["float32"].argmax(1) == scores["bfloat16"].argmax(1))),
        "max_abs_letter_logit_diff": float(np.abs(scores["float32"] - scores["bfloat16"]).max()),
        "same_generated_text": sum(a == b for a, b in zip(texts["float32"], texts["bfloat16"], strict=True)),
    }
    for dtype in DTYPES:
        print(f"{dtype:9s} forward {best[dtype]['forward_s']:.2f}s ({prompt_tokens / best[dtype]['forward_s']:.0f} "
              f"prompt tokens/s)  generate {best[dtype]['generate_s']:.2f}s")
    print({k: v for k, v in report.items() if k not in ("times", "precision")})
    print(f"precision: {report['precision']}")
    if args.json:
        from capo.io import write_json

        write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
