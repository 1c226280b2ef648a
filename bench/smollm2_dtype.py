"""CPU speed of SmolLM2-135M-Instruct in fp32 and bf16: letter scoring (forward) and greedy generation.

    python bench/smollm2_dtype.py --model models/smollm2-135m-instruct --prompts 8 --rounds 3

The same converted folder loaded with `dtype=float32` and `dtype=bfloat16` (rounds alternate the two, so load from
other jobs on a shared machine hits both alike); the chat-formatted VariErr NLI prompts of the first items.
Forward = `capo.mjd.scoring.HFScorer` on the items' MJD prompts (no explanations, identity option order) in one
plain length-sorted pass (no prefix reuse); generate = greedy `generate` of `--new_tokens` tokens for the items' SFT
prompts (`capo.data.prompts`) in one left-padded batch. Reports the best time of each,
and how often the two dtypes agree on the argmax letter and on the generated text.
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


@run_main
def main(argv: list[str] | None = None) -> dict:
    import numpy as np
    import torch
    from capo.mjd.scoring import HFScorer
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import TrlParser

    from capo.data.loaders import load_varierr
    from capo.data.prompts import prompt_messages
    from capo.mjd.estimate import PromptSpec, chat_renderer, user_message

    (args,) = TrlParser((DtypeBenchArguments,)).parse_args_and_config(argv)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    items = load_varierr()[: args.prompts]
    chats = [tokenizer.apply_chat_template(prompt_messages(item), tokenize=False, add_generation_prompt=True)
             for item in items]
    render = chat_renderer(tokenizer)
    letter_prompts = [render(user_message(item, [], PromptSpec(item.id, (0, 1, 2)))) for item in items]
    models = {d: AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, d)).eval() for d in DTYPES}
    batch = tokenizer(chats, return_tensors="pt", padding=True, add_special_tokens=False)
    best = {d: {"forward_s": float("inf"), "generate_s": float("inf")} for d in DTYPES}
    scores, texts = {}, {}
    for _ in range(args.rounds):
        for dtype, model in models.items():
            scorer = HFScorer(model, tokenizer, min_shared_tokens=10**9)
            start = time.perf_counter()
            scores[dtype] = scorer.score(letter_prompts)
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
        "torch_threads": torch.get_num_threads(), "times": best,
        "bf16_speedup": {k: best["float32"][k] / best["bfloat16"][k] for k in ("forward_s", "generate_s")},
        "argmax_letter_agreement": float(np.mean(scores["float32"].argmax(1) == scores["bfloat16"].argmax(1))),
        "max_abs_letter_logit_diff": float(np.abs(scores["float32"] - scores["bfloat16"]).max()),
        "same_generated_text": sum(a == b for a, b in zip(texts["float32"], texts["bfloat16"], strict=True)),
    }
    for dtype in DTYPES:
        print(f"{dtype:9s} forward {best[dtype]['forward_s']:.2f}s ({prompt_tokens / best[dtype]['forward_s']:.0f} "
              f"prompt tokens/s)  generate {best[dtype]['generate_s']:.2f}s")
    print({k: v for k, v in report.items() if k != "times"})
    return report


if __name__ == "__main__":
    main()
