"""What a study slice (`recipes/study_slice.py`) costs on another CPU: the reference batch of issue 26 (SmolLM2-135M,
4 prompts x 68 tokens) timed here — a forward pass and a LoRA training step, in this CPU's `auto` precision — and a
finished slice's measured job times scaled by the ratio of a reference machine's times for the same batch.

    python bench/study_slice_cost.py --slice docs/study/slices/nli_core_s0/slice.json \\
        --reference_forward 1.8 --reference_train_step 6.7     # the issue's 2-core AVX2 EPYC, fp32 (its numbers)

Training jobs (SFT, CAPO) scale by the training-step ratio; generation, label scoring and the rest by the forward
ratio (generation decodes in small batches, which a throughput ratio approximates). A core slice is also projected
as its three parts (`--part sft`, `capo`, `pseudo`: `capo.study.slice.CORE_PARTS`) and a controls slice as its three
variants (`--part capo_same_label` ...), each paying the whole slice's unattributed time (judges, files). The result is a projection from measured parts, not a run on that
machine; the output says so, with `capo.precision.precision_report()`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads slow shared CPUs 10-25x

from capo.cli import parse_arguments, run_main
from capo.study.slice import slice_seconds

TRAINING = ("sft ", "capo", "pseudo_sft ", "pseudo_capo ")


@dataclass
class SliceCostArguments:
    model: str = "models/smollm2-135m-instruct"
    slice: str | None = field(default=None, metadata={"help": "a finished slice's slice.json to project"})
    reference_forward: float = field(default=1.8, metadata={"help": "reference machine: forward seconds"})
    reference_train_step: float = field(default=6.7, metadata={"help": "reference machine: training step seconds"})
    prompts: int = 4
    tokens: int = 68
    rounds: int = field(default=3, metadata={"help": "best of this many timings each"})


def time_reference_batch(args: SliceCostArguments) -> dict:
    """Best-of-`rounds` seconds of a forward and of a LoRA training step (r 16, all linear layers, AdamW)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from capo.precision import resolve_dtype

    dtype = resolve_dtype("auto")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    ids = torch.randint(100, model.config.vocab_size - 100, (args.prompts, args.tokens))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    forward = []
    with torch.no_grad(), autocast:
        for _ in range(args.rounds + 1):
            start = time.perf_counter()
            model(input_ids=ids)
            forward.append(time.perf_counter() - start)
    lora = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    optimizer = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-4)
    train = []
    for _ in range(args.rounds + 1):
        start = time.perf_counter()
        with autocast:
            loss = lora(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        train.append(time.perf_counter() - start)
    return {"precision": dtype, "forward_s": round(min(forward[1:]), 3), "train_step_s": round(min(train[1:]), 3)}


def project(slice_meta: dict, here: dict, args: SliceCostArguments) -> dict:
    """The slice's job times scaled to the reference machine (training by the step ratio, the rest by forward)."""
    train_ratio = args.reference_train_step / here["train_step_s"]
    forward_ratio = args.reference_forward / here["forward_s"]
    wall = {k: v for k, v in slice_meta["wall_s"].items() if k != "total"}
    total = slice_seconds(slice_meta["wall_s"], slice_meta.get("wall_s_earlier", ()))  # with the jobs a resume kept
    training = sum(v for k, v in wall.items() if k.startswith(TRAINING))
    rest = total - training
    return {"train_ratio": round(train_ratio, 2), "forward_ratio": round(forward_ratio, 2),
            "measured_total_s": round(total, 1), "measured_training_s": round(training, 1), "measured_rest_s": round(rest, 1),
            "projected_s": round(training * train_ratio + rest * forward_ratio),
            "projected_min": round((training * train_ratio + rest * forward_ratio) / 60, 1)}


def part_of_job(job: str, sources: dict) -> str:
    """The part command that runs a core or controls slice's job (its `wall_s` label): one of
    `capo.study.slice.CORE_PARTS`, or the CAPO variant's own part (`CONTROL_VARIANTS`)."""
    from capo.errors import DataError
    from capo.study.slice import CONTROL_VARIANTS, CORE_PARTS

    what, _, name = job.partition(" ")
    kind = sources.get(name, {}).get("kind") if what in ("generate", "labels") else what
    # a training job is named by its adapter kind, a generation or label job by its source: CORE_PARTS holds both
    parts = {**{k: p for p, kinds in CORE_PARTS.items() for k in kinds}, **{k: k for k in CONTROL_VARIANTS}}
    if kind not in parts:
        raise DataError(f"no part runs job {job!r}", field="wall_s")
    return parts[kind]


def project_parts(slice_meta: dict, here: dict, args: SliceCostArguments) -> dict:
    """A core or controls slice projected as its smaller parts (one command each); the unattributed rest (judges,
    files) is charged to every part."""
    wall = {k: v for k, v in slice_meta["wall_s"].items() if k != "total"}
    unattributed = max(slice_seconds(slice_meta["wall_s"], slice_meta.get("wall_s_earlier", ())) - sum(wall.values()),
                       0.0)
    parts: dict[str, dict] = {}
    for job, seconds in wall.items():
        part = parts.setdefault(part_of_job(job, slice_meta["sources"]), {"wall_s": {"total": unattributed}})
        part["wall_s"][job] = seconds
    out = {}
    for name, part in parts.items():
        part["wall_s"]["total"] += sum(v for k, v in part["wall_s"].items() if k != "total")
        out[name] = project(part, here, args)
    return out


@run_main
def main(argv: list[str] | None = None) -> dict:
    import json

    from capo.io import read_json
    from capo.precision import precision_report

    (args,) = parse_arguments((SliceCostArguments,), argv, prog="bench/study_slice_cost.py", description=__doc__)
    here = time_reference_batch(args)
    report = {"machine": precision_report(), "here": here,
              "reference": {"forward_s": args.reference_forward, "train_step_s": args.reference_train_step}}
    if args.slice:
        meta = read_json(args.slice)
        report["projection"] = project(meta, here, args)
        if meta.get("part") in ("core", "controls"):
            report["projection_by_part"] = project_parts(meta, here, args)
        report["note"] = "a projection from measured parts (this machine's slice times x reference/here ratios)"
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
