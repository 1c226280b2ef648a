"""Annotator-behaviour stages: likelihood attribution, judges and imitation, explanation variability, each one
entry point (`eval/attribution.py`, `eval/imitation.py`, `eval/variability.py`) launched with the options the
configuration implies; a stage reads back the files its jobs wrote for its summary.
"""

from __future__ import annotations

from capo.io import read_json
from capo.pipeline import layout
from capo.pipeline.arguments import named_paths
from capo.pipeline.cache import Context
from capo.pipeline.launch import ATTRIBUTION, IMITATION, VARIABILITY, launch


def attribution_adapters(ctx: Context) -> dict[str, str]:
    adapters = {kind: layout.adapter_template(ctx.root, kind) for kind in layout.KINDS}
    if ctx.args.conditioned:  # no {annotator}: scored as one explainer prompted with each target's id
        adapters["cond"] = str(ctx.root / "capo" / "seed{seed}" / "{task}" / "all")
    return adapters


def attribution_argv(ctx: Context, task: str) -> list[str]:
    """`eval/attribution.py` options of one task: base vs every adapter kind on the configured held-out splits."""
    args, out = ctx.args, ctx.dir("attribution")
    adapters = [word for kind, template in attribution_adapters(ctx).items()
                for word in ("--adapter", f"{kind}={template}")]
    return ["--model", args.model, *adapters,
            "--seeds", *map(str, args.seeds), "--annotators", *args.annotators, "--task", task,
            "--dataset", layout.task_dataset(args, task), "--split_seed", str(args.split_seed),
            "--splits", *args.attribution_splits, "--exclude_pretrained", str(args.exclude_pretrained).lower(),
            *(["--limit", str(args.attribution_limit)] if args.attribution_limit else []), "--dtype", args.dtype,
            "--scores_dir", str(out / "scores" / task),  # a killed stage resumes at the next model
            "--output", str(out / f"{task}.json")]


def run_attribution(ctx: Context) -> dict:
    """Likelihood attribution per task (`eval/attribution.py`): base vs SFT vs CAPO on held-out items."""
    tasks, commands = {}, []
    for task in ctx.args.tasks:
        commands.append(launch(ctx.args, ATTRIBUTION, attribution_argv(ctx, task)))
        report = read_json(ctx.dir("attribution") / f"{task}.json")
        tasks[task] = {"items": report["items"],
                       "capo_gain": {t: row["capo"]["gain"]["gain"] for t, row in report["annotators"].items()}}
    line = "; ".join(f"{t}: {d['items']} items, CAPO gain over base "
                     + ", ".join(f"{a} {g:+.3f}" for a, g in d["capo_gain"].items()) for t, d in tasks.items())
    return {"line": line, "tasks": tasks, "commands": commands}


def generated_argv(ctx: Context, task: str) -> list[str]:
    """`--generated NAME=PATH` of every generation run of `task` (imitation and variability read the same)."""
    return [word for name in layout.generation_runs(ctx.args, ctx.root, task)
            for word in ("--generated", f"{name}={layout.generation_dir(ctx.root, task, name) / 'generations.jsonl'}")]


def imitation_argv(ctx: Context, task: str, judge: str) -> list[str]:
    """`eval/imitation.py` options of one task and judge; the LLM judge is the pipeline's model."""
    args, out = ctx.args, ctx.dir("imitation")
    llm = judge == "llm"
    return ["--task", task, "--dataset", layout.task_dataset(args, task), "--split_seed", str(args.split_seed),
            "--judge", judge, "--features", args.judge_features,
            *(["--judge_model", args.model, "--judge_dtype", args.dtype,
               "--judge_cache", str(out / f"{task}_llm_judgements.json")] if llm else []),  # a killed stage resumes
            # judge_limit cuts the LLM judge's sets only (its prompts hold 12 examples: seconds a response on CPU)
            *(["--limit", str(args.judge_limit)] if llm and args.judge_limit else []),
            "--ks", *map(str, args.imitation_ks), *([] if args.embeddings else ["--no_embeddings"]),
            *generated_argv(ctx, task), "--output", str(out / f"{task}_{judge}.json")]


def run_imitation(ctx: Context) -> dict:
    """Judge attribution and aggregation-aware imitation per task and judge (`eval/imitation.py`)."""
    result, commands, lines = {}, [], []
    for task in ctx.args.tasks:
        for judge in ctx.args.judges:
            commands.append(launch(ctx.args, IMITATION, imitation_argv(ctx, task, judge)))
            path = ctx.dir("imitation") / f"{task}_{judge}.json"
            entry = read_json(path)
            result[f"{task}_{judge}"] = {"file": str(path.relative_to(ctx.root)), "command": commands[-1]}
            # each target's ceiling and label JS are on the items its generated set covers (`judge_sources`)
            covered = sorted({row["basis"]["generated"]["items"] for per in entry["sources"].values()
                              for row in per.values() if "basis" in row})
            span = "" if not covered else f"{covered[0]}" if len(covered) == 1 else f"{covered[0]}-{covered[-1]}"
            human = entry["human_heldout"]
            lines.append(f"{task} {judge} judge: human held-out accuracy {human['accuracy']:.3f} "
                         f"(chance {human['chance']:.2f}, {entry['heldout_items']} items)"
                         + (f"; generated sets and their human ceilings on {span} items" if span else ""))
    return {"line": "; ".join(lines), "reports": result, "commands": commands}


def variability_argv(ctx: Context, table: str) -> list[str]:
    """`eval/variability.py` options of one table: per task, the modelled annotators' explanations on the held-out
    items the generation runs hold (the human set measured is written beside the table) vs each run's; `nli341`,
    the humans vs the released LLM explanation files."""
    args, out = ctx.args, ctx.dir("variability")
    if table == "nli341":
        sources = [word for name, path in named_paths(args.model_explanations, "model_explanations").items()
                   for word in ("--model_explanations", f"{name}={path}")]
    else:
        sources = ["--items", "generated", "--annotators", *args.annotators,
                   "--human_output", str(out / f"{table}_heldout_items.jsonl"), *generated_argv(ctx, table)]
    human = "nli341" if table == "nli341" else layout.task_dataset(args, table)
    return ["--human", human, *sources, *([] if args.embeddings else ["--no_embeddings"]),
            "--output", str(out / f"{table}.json")]


def variability_tables(args) -> list[str]:
    """One table per task, and `nli341` where there are released LLM explanations to compare on the 341 items."""
    return [*args.tasks, *(["nli341"] if "nli" in args.tasks and args.model_explanations else [])]


def run_variability(ctx: Context) -> dict:
    """Explanation variability (`eval/variability.py`): per task, the generation runs beside the humans on the same
    held-out items; on the 341 items, humans vs the released LLM explanation files."""
    args = ctx.args
    tables = variability_tables(args)
    commands, sources = [], {}
    for table in tables:
        commands.append(launch(args, VARIABILITY, variability_argv(ctx, table)))
        sources[table] = len(read_json(ctx.dir("variability") / f"{table}.json")["table"])
    line = "; ".join(f"{name}: {n} sources" for name, n in sources.items())
    return {"line": line, "tables": sorted(tables), "commands": commands}
