"""CAPO training throughput: TRL `DPOTrainer` with its defaults vs capo's shared-prefix packed training.

    python bench/train_throughput.py --model models/corpus-lm --pairs 256 [--json results/train_throughput.json]

Same model, LoRA (r=16, all linear layers), pairs (one target annotator's VariErr training pairs, <= 3 per item),
precision (bf16 autocast, TRL's default) and learning rate, one epoch each, each variant in its own process so peak
memory (max RSS on CPU) is its own. TRL keeps its defaults: batch 8, gradient checkpointing on, a reference forward
every step (and once more without checkpointing, for reference). `packed_trainer` is the same packing inside the
`DPOTrainer` subclass that `recipes/capo.py --shared_prefix true` uses (3 groups per batch, Trainer machinery). Ours packs prompt | chosen | rejected_1..k once per group with a block mask and no padding, 8 pairs per
step, no checkpointing. `wall` counts everything after the model is loaded: tokenisation, grouping, training.
Per-pair losses of both implementations are compared on the same randomly initialised (non-zero) LoRA policy, and
each trained adapter's mean DPO loss on the target's dev pairs is measured with one scorer. bf16 is what this
measures (TRL's default), so the results record the CPU's bf16 capability (`capo.precision.precision_report`:
emulated bf16 is 4-40x slower) beside the timings.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads slow shared CPUs 10-25x


def _pairs(args) -> list[dict]:
    from capo.data.datasets import load_task_data
    from capo.train.pairs import capo_pairs

    rows = capo_pairs(load_task_data("nli").items("train"), args.annotator, max_pairs_per_item=3)
    return rows[: args.pairs]


def _lora(init=True):
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM",
                      init_lora_weights=init)


def _load_model(args):
    """The base model in fp32, as TRL loads a model path (`create_model_from_path`: float32 unless
    `model_init_kwargs` says otherwise). A bare `from_pretrained` takes the dtype stored in config.json since
    Transformers v5: bf16 for SmolLM2, fp32 for the corpus LM (which hid it), so the packed side scored a bf16 model
    against TRL's fp32 one (agreement 0.056 instead of ~3e-6 on SmolLM2, with identical tokens)."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)


def _tokens(rows, tokenizer) -> int:
    from capo.train.pairs import split_prompt_completion

    total = 0
    for row in rows:
        for side in ("chosen", "rejected"):
            prompt, completion = split_prompt_completion(tokenizer, row["prompt"], row[side])
            total += len(prompt) + len(completion)
    return total


def _peak_rss_mib() -> float:
    """Peak resident memory of this process so far (training variants read it before the held-out scoring)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def held_out_loss(model, args) -> float:
    """Mean DPO loss on the target's dev pairs (reference = adapters disabled), fp32, one scorer for every variant."""
    import torch
    from transformers import AutoTokenizer

    from capo.data.datasets import load_task_data
    from capo.train.packed import dpo_sigmoid_losses, group_pairs, pack, pair_logps
    from capo.train.pairs import capo_pairs

    rows = capo_pairs(load_task_data("nli").items("dev"), args.annotator, max_pairs_per_item=3)
    packed = pack(group_pairs(rows, AutoTokenizer.from_pretrained(args.model)))
    model.eval()
    with torch.no_grad():
        with model.disable_adapter():
            reference = pair_logps(model, packed)
        return dpo_sigmoid_losses(pair_logps(model, packed), reference, args.beta).mean().item()


def _trl_trainer(args, rows, out, init=True, model=None, gradient_checkpointing=True, shared_prefix=False):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from capo.train.packed_trainer import SharedPrefixDPOTrainer

    trainer_class = SharedPrefixDPOTrainer if shared_prefix else DPOTrainer
    # The shared-prefix trainer's batch counts groups of 1-3 pairs: 3 groups is about TRL's 8 pairs.
    config = DPOConfig(output_dir=out, use_cpu=True, per_device_train_batch_size=3 if shared_prefix else 8,
                       num_train_epochs=1,
                       learning_rate=args.learning_rate, lr_scheduler_type="constant", report_to=[],
                       save_strategy="no", logging_steps=1, disable_tqdm=True, dataloader_num_workers=0,
                       seed=args.seed, gradient_checkpointing=gradient_checkpointing)
    return trainer_class(model=model or args.model, args=config, train_dataset=Dataset.from_list(rows),
                      processing_class=AutoTokenizer.from_pretrained(args.model), peft_config=_lora(init))


def run_trl(args, rows, gradient_checkpointing: bool = True, shared_prefix: bool = False) -> dict:
    model = _load_model(args)  # loading is outside the timing, as for ours
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        trainer = _trl_trainer(args, rows, out, model=model, gradient_checkpointing=gradient_checkpointing,
                               shared_prefix=shared_prefix)
        trainer.train()
        wall = time.perf_counter() - start
        losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
        return {"wall_s": wall, "peak_rss_mib": _peak_rss_mib(), "held_out_loss": held_out_loss(trainer.model, args), "steps": trainer.state.global_step, "losses": losses,
                "gradient_checkpointing": trainer.args.gradient_checkpointing, "bf16": trainer.args.bf16}


def run_packed(args, rows) -> dict:
    import torch
    from peft import get_peft_model
    from transformers import AutoTokenizer, set_seed

    from capo.train.packed import batches, dpo_sigmoid_losses, group_pairs, pack, pair_logps

    set_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = get_peft_model(_load_model(args), _lora())
    start = time.perf_counter()
    groups = group_pairs(rows, tokenizer)
    random.Random(args.seed).shuffle(groups)  # as the Trainer shuffles pairs; pairs of a group stay together
    steps = [pack(batch) for batch in batches(groups, 8)]
    # The Trainer's optimiser settings: AdamW without weight decay, gradients clipped to norm 1.
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.learning_rate, weight_decay=0.0)
    model.train()
    losses, forwarded = [], 0
    for packed in steps:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            with torch.no_grad(), model.disable_adapter():
                reference = pair_logps(model, packed)
            loss = dpo_sigmoid_losses(pair_logps(model, packed), reference, args.beta).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        forwarded += packed["tokens"]
    wall = time.perf_counter() - start
    return {"wall_s": wall, "peak_rss_mib": _peak_rss_mib(), "held_out_loss": held_out_loss(model, args), "steps": len(steps), "losses": losses, "groups": len(groups),
            "tokens_forwarded_per_pass": forwarded}


def run_agreement(args, rows) -> dict:
    """Per-pair DPO loss of TRL's own code vs the packed code, same random LoRA policy, fp32 without autocast, base
    as reference. `token_mismatches` counts pairs whose prompt / chosen / rejected ids differ between TRL's tokenised
    dataset and the packed groups (0: both score the same tokens); `dtypes` are both policies' parameter dtypes."""
    import torch
    from peft import get_peft_model
    from transformers import AutoTokenizer

    from capo.train.packed import dpo_sigmoid_losses, group_pairs, pack, pair_logps

    rows = rows[: args.agreement_pairs]
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    groups = group_pairs(rows, tokenizer)
    ours_ids = {row: (g.prompt, g.chosen, rejected) for g in groups for row, rejected in zip(g.pairs, g.rejected)}
    with tempfile.TemporaryDirectory() as out:
        torch.manual_seed(args.seed)
        trainer = _trl_trainer(args, rows, out, init=False)  # non-zero LoRA: policy differs from reference
        trainer.model.eval()
        assert len(trainer.train_dataset) == len(rows)  # TRL dropped no pair (a prompt over max_length)
        trl_ids = [(x["prompt_ids"], x["chosen_ids"], x["rejected_ids"]) for x in trainer.train_dataset]
        trl_losses = []
        with torch.no_grad(), torch.autocast("cpu", enabled=False):
            for k in range(len(rows)):
                trl_losses.append(trainer.compute_loss(trainer.model, trainer.data_collator([trainer.train_dataset[k]])).item())
        lora_state = {k: v for k, v in trainer.model.state_dict().items() if "lora_" in k}
        trl_dtype = trainer.model.get_base_model().dtype
    model = get_peft_model(_load_model(args), _lora(False))
    missing = model.load_state_dict(lora_state, strict=False)
    assert not missing.unexpected_keys
    model.eval()
    packed = pack(groups)
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        with model.disable_adapter():
            reference = pair_logps(model, packed)
        ours = dpo_sigmoid_losses(pair_logps(model, packed), reference, args.beta)
    by_row = dict(zip(packed["pair_rows"], ours.tolist(), strict=True))
    diffs = [abs(by_row[k] - trl_losses[k]) for k in range(len(rows))]
    return {"pairs": len(rows), "max_abs_diff": max(diffs), "mean_trl_loss": sum(trl_losses) / len(rows),
            "mean_packed_loss": sum(by_row.values()) / len(rows),
            "token_mismatches": sum(trl_ids[k] != ours_ids[k] for k in range(len(rows))),
            "dtypes": [str(trl_dtype), str(model.get_base_model().dtype)]}


VARIANTS = {"trl": run_trl, "trl_no_checkpointing": lambda args, rows: run_trl(args, rows, False),
            "packed": run_packed,
            "packed_trainer": lambda args, rows: run_trl(args, rows, gradient_checkpointing=False, shared_prefix=True),
            "agreement": run_agreement}


def child(args) -> None:
    from transformers import AutoTokenizer

    rows = _pairs(args)
    result = VARIANTS[args.variant](args, rows)
    result["pairs"] = result.get("pairs", len(rows))
    if args.variant != "agreement":
        result["pair_tokens"] = _tokens(rows, AutoTokenizer.from_pretrained(args.model))
        result["pair_tokens_per_s"] = result["pair_tokens"] / result["wall_s"]
    result.setdefault("peak_rss_mib", _peak_rss_mib())
    print("RESULT " + json.dumps(result))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/corpus-lm")
    parser.add_argument("--annotator", default="A2")
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--agreement_pairs", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=5e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--json", help="write the results as JSON")
    args = parser.parse_args(argv)
    if args.variant:
        child(args)
        return {}
    results = {}
    for variant in VARIANTS:
        command = [sys.executable, __file__, "--variant", variant, *(argv if argv is not None else sys.argv[1:])]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode or not lines:
            raise SystemExit(f"error: variant {variant} failed: {done.stderr.strip().splitlines()[-1:]}")
        results[variant] = json.loads(lines[-1][len("RESULT "):])
        print(variant, {k: v for k, v in results[variant].items() if k != "losses"}, flush=True)
    trl, packed = results["trl"], results["packed"]
    results["speedup_wall"] = trl["wall_s"] / packed["wall_s"]
    results["speedup_wall_vs_no_checkpointing"] = results["trl_no_checkpointing"]["wall_s"] / packed["wall_s"]
    results["speedup_wall_trainer_subclass"] = trl["wall_s"] / results["packed_trainer"]["wall_s"]
    results["memory_ratio"] = packed["peak_rss_mib"] / trl["peak_rss_mib"]
    results["memory_ratio_trainer_subclass"] = results["packed_trainer"]["peak_rss_mib"] / trl["peak_rss_mib"]
    for variant in ("trl", "trl_no_checkpointing", "packed", "packed_trainer"):
        results[variant]["mean_loss"] = sum(results[variant]["losses"]) / len(results[variant]["losses"])
    from capo.precision import precision_report

    results["precision"] = precision_report("cpu")  # every variant trains on the CPU (use_cpu, CPU autocast)
    print(json.dumps({k: v for k, v in results.items() if not isinstance(v, dict)}))
    print(f"precision: {results['precision']}")
    if args.json:
        from capo.io import write_json

        write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
