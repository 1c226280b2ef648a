"""What a configuration would run, printed without running it (`recipes/pipeline.py --dry_run true`), to read before
a GPU is spent on it.

Every enabled stage's jobs are parsed by their own entry points (`Job.parse`, as the stage plans parse them) and their
resolved options printed (precision, checkpointing, learning rate, batch sizes, dtype), grouped where jobs agree; each
training, generation and MJD stage gets its memory plan (`capo.memory`) for the configured model, checked against the
visible GPU, or a `gpu_memory_gib` one where none is visible. No model loads, no stage runs, nothing is written.
Stages whose jobs are built from upstream outputs (distributions, jury, LeWiDi explainers, report) are named with
what they read.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from capo.errors import DataError
from capo.memory import GIB, Inference, Training, device_memory, fits, gib, model_shape
from capo.pipeline import layout
from capo.pipeline.arguments import PipelineArguments, named_paths
from capo.pipeline.cache import Context, enabled_stages
from capo.pipeline.launch import (
    ATTRIBUTION,
    CAPO,
    FINETUNE,
    GENERATE,
    IMITATION,
    MJD,
    PERSPECTIVIST,
    SFT,
    VARIABILITY,
    Job,
    command_line,
)
from capo.pipeline.stages import STAGES
from capo.pipeline.stages.behaviour import (
    attribution_argv,
    imitation_argv,
    variability_argv,
    variability_tables,
)
from capo.pipeline.stages.common import refused
from capo.pipeline.stages.distributions import finetune_argv, mjd_argv
from capo.pipeline.stages.explainers import explainer_argv
from capo.pipeline.stages.lewidi import perspectivist_argv

# The options shown per job, in this order, where its parsed arguments have them (the first dataclass that has one).
SHOWN = ("dtype", "bf16", "fp16", "attn_implementation", "gradient_checkpointing", "learning_rate", "num_train_epochs",
         "max_steps", "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
         "max_length", "lora_r", "lora_alpha", "lora_target_modules", "load_in_4bit", "shared_prefix", "loss_type",
         "beta", "backend", "engine", "batch_size", "max_batch_tokens", "few_shot", "max_new_tokens", "judge_dtype")
Jobs = list[tuple[str, Job, list[str]]]


def _explainers(kind: str) -> Callable[[Context], Jobs]:
    job = SFT if kind == "sft" else CAPO
    return lambda ctx: [(unit.name, job, explainer_argv(ctx, kind, unit)) for unit in layout.units(ctx.args)]


# Stage -> its jobs (label, entry point, options) as the configuration alone decides them.
JOBS: dict[str, Callable[[Context], Jobs]] = {
    "sft": _explainers("sft"),
    "capo": _explainers("capo"),
    "generation": lambda ctx: [(f"{task} {name}", GENERATE, argv) for task in ctx.args.tasks
                               for name, argv in layout.generation_runs(ctx.args, ctx.root, task).items()],
    "attribution": lambda ctx: [(task, ATTRIBUTION, attribution_argv(ctx, task)) for task in ctx.args.tasks],
    "imitation": lambda ctx: [(f"{task} {judge}", IMITATION, imitation_argv(ctx, task, judge))
                              for task in ctx.args.tasks for judge in ctx.args.judges],
    "variability": lambda ctx: [(table, VARIABILITY, variability_argv(ctx, table))
                                for table in variability_tables(ctx.args)],
    "mjd": lambda ctx: [(name, MJD, mjd_argv(ctx, name, config))
                        for name, config in named_paths(ctx.args.mjd_runs, "mjd_runs").items()],
    "finetune": lambda ctx: [(f"chaosnli s{seed}", FINETUNE, finetune_argv(ctx, "chaosnli", "chaosnli", seed))
                             for seed in ctx.args.seeds],
    "lewidi": lambda ctx: [(f"perspectivist {dataset} s{seed}", PERSPECTIVIST, perspectivist_argv(ctx, dataset, seed))
                           for dataset in ctx.args.lewidi_datasets for seed in ctx.args.seeds]
    if ctx.args.perspectivist else [],
}
# What the other stages' jobs read, where the configuration alone does not decide their options.
UPSTREAM = {
    "data": "splits and histories from the shipped data (no model)",
    "distributions": "each MJD file against ChaosNLI (eval/distributions.py; no model)",
    "finetune": "also the lowest-KL MJD, known once the distributions stage has run",
    "jury": "the explainers' label probabilities (eval/jury.py: model {model}, dtype {dtype}, batch "
            "{generate_batch_size})",
    "lewidi_explainers": "the explainers as LeWiDi annotators (eval/lewidi.py predict: model {model}, dtype {dtype}, "
                         "batch {generate_batch_size})",
    "lewidi": "the organisers' constant baselines (eval/lewidi.py; no model)",
    "report": "every stage's outputs (no model)",
}


def _value(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return str(value)


def resolved(parsed: tuple) -> str:
    """The `SHOWN` options of one job's parsed arguments, `name value` each."""
    shown = (f"{name} {_value(getattr(part, name))}" for name in SHOWN
             for part in [next((p for p in parsed if hasattr(p, name)), None)] if part is not None)
    return ", ".join(shown)


def memory_spec(stage: str, parsed: tuple) -> Training | Inference | None:
    """The memory a job of `stage` plans for (`capo.memory`); None for a stage without a model of its own."""
    if stage in ("sft", "capo"):
        script_args, training_args, model_args = parsed[0], parsed[2], parsed[3]
        return Training.from_args(training_args, model_args, preference=stage == "capo",
                                  shared_prefix=script_args.shared_prefix)
    if stage == "generation":
        return Inference.for_generation(parsed[0])
    if stage == "mjd":
        return Inference.for_mjd(parsed[0])
    return None


def _labels(labels: list[str]) -> str:
    shown = ", ".join(labels) if len(labels) <= 4 else f"{labels[0]}, {labels[1]} ... {labels[-1]}"
    return f"{shown} ({len(labels)} job{'s' if len(labels) > 1 else ''})"


def dry_run(args: PipelineArguments, log: Callable[[str], None] = print) -> list[dict]:
    """Print what `args` would run (module docstring); returns one row per enabled stage: its jobs' resolved options
    and memory plans. Refuses, as a run would, a job whose options its entry point refuses."""
    stages = enabled_stages(STAGES, args, args.skip)
    ctx = Context(args, Path(args.output_dir), log, tuple(s.name for s in stages))
    device = device_memory()
    if device is None:
        device = ("none visible: gpu_memory_gib", int(args.gpu_memory_gib * GIB))
    shape = None
    log(f"[dry run] {len(stages)} stages, nothing runs; model {args.model}; memory plans against a "
        f"{gib(device[1])} GiB GPU ({device[0]}); options as parsed on this machine (the trainers' use_cpu follows it)")
    rows = []
    for stage in stages:
        jobs = JOBS[stage.name](ctx) if stage.name in JOBS else []
        groups: dict[str, list[tuple[str, Job, list[str], tuple]]] = {}
        for label, job, argv in jobs:
            try:
                parsed = job.parse(argv)
            except DataError as err:
                raise refused(err, None, job) from None
            groups.setdefault(resolved(parsed), []).append((label, job, argv, parsed))
        parts = [f"{len(jobs)} job(s) of {jobs[0][1].script}" if jobs else "",
                 UPSTREAM.get(stage.name, "").format(**vars(args))]
        log(f"{stage.name}: " + "; ".join(part for part in parts if part))
        plans = {}
        for options, members in groups.items():
            log(f"  {_labels([m[0] for m in members])}" + (f": {options}" if options else ""))
            log(f"    e.g. {command_line(args, members[0][1], members[0][2])}")
            for label, _, _, parsed in members:
                spec = memory_spec(stage.name, parsed)
                if spec is not None and spec not in plans:
                    plans[spec] = label
        memory = []
        for spec, label in plans.items():
            if shape is None:
                shape, source = model_shape(args.model, args.model_config)
                log(f"  (model shape: {shape.name}, {shape.params / 1e9:.2f} B parameters, from {source})")
            estimates, refusal = fits(shape, spec, device)  # a refusal holds the largest plan, and what to change
            log(f"  memory ({label}): " + ("; ".join(p.line() for p in estimates) + f" - fits {gib(device[1])} GiB"
                                           if refusal is None else f"DOES NOT FIT: {refusal}"))
            memory.append({"job": label, "plans": [p.line() for p in estimates], "fits": refusal is None})
        rows.append({"stage": stage.name, "jobs": len(jobs), "options": list(groups), "memory": memory})
    return rows
