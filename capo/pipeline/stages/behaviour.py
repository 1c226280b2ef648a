"""Annotator-behaviour stages: likelihood attribution, judges and imitation, explanation variability.
"""

from __future__ import annotations

from functools import partial

from capo.io import atomic_write_text, write_json, write_jsonl
from capo.pipeline import layout
from capo.pipeline.arguments import named_paths
from capo.pipeline.cache import Context
from capo.pipeline.progress import bar, counting_log
from capo.pipeline.stages.common import generations


def attribution_adapters(ctx: Context) -> dict[str, str]:
    adapters = {kind: layout.adapter_template(ctx.root, kind) for kind in layout.KINDS}
    if ctx.args.conditioned:  # no {annotator}: scored as one explainer prompted with each target's id
        adapters["cond"] = str(ctx.root / "capo" / "seed{seed}" / "{task}" / "all")
    return adapters


def run_attribution(ctx: Context) -> dict:
    """Likelihood attribution per task (`eval/attribution.py`): base vs SFT vs CAPO on held-out items."""
    from capo.data.datasets import load_task_data
    from capo.data.heldout import select_heldout
    from capo.evaluate.behaviour.attribution import (
        adapter_folders,
        adapter_names,
        attribution_report,
        format_report,
    )

    args, out = ctx.args, ctx.dir("attribution")
    adapters = attribution_adapters(ctx)
    tasks, commands = {}, []
    for task in args.tasks:
        folders = adapter_names(adapter_folders(adapters, args.seeds, args.annotators, task))
        data = load_task_data(task, layout.task_dataset(args, task), args.split_seed)
        items = [item for split in args.attribution_splits
                 for item in select_heldout(data, split, folders)[: args.attribution_limit]]
        progress = bar(len(set(folders.values())), f"attribution {task}", "model")
        report = attribution_report(args.model, adapters, items, seeds=args.seeds, annotators=args.annotators,
                                    task=task, exclude_pretrained=args.exclude_pretrained, dtype=args.dtype,
                                    scores_dir=str(out / "scores" / task),  # a killed stage resumes at the next model
                                    log=counting_log(progress, lambda m: m.startswith("scored ")))
        progress.close()
        report.update(model=args.model, adapters=adapters, splits=args.attribution_splits, task=task,
                      dataset=data.dataset, exclude_pretrained=args.exclude_pretrained, limit=args.attribution_limit,
                      dtype=args.dtype)
        write_json(out / f"{task}.json", report)
        atomic_write_text(out / f"{task}.md", format_report(report, list(adapters)) + "\n")
        commands.append(" ".join(["python eval/attribution.py --model", args.model,
                                  *(f"--adapter '{k}={v}'" for k, v in adapters.items()),
                                  "--seeds", *map(str, args.seeds), "--annotators", *args.annotators, "--task", task,
                                  "--dataset", data.dataset, "--split_seed", str(args.split_seed), "--splits", *args.attribution_splits,
                                  "--exclude_pretrained", str(args.exclude_pretrained).lower(),
                                  *(["--limit", str(args.attribution_limit)] if args.attribution_limit else []),
                                  "--dtype", args.dtype, "--output", str(out / f"{task}.json")]))
        gains = {t: row["capo"]["gain"]["gain"] for t, row in report["annotators"].items()}
        tasks[task] = {"items": report["items"], "capo_gain": gains}
    line = "; ".join(f"{t}: {d['items']} items, CAPO gain over base "
                     + ", ".join(f"{a} {g:+.3f}" for a, g in d["capo_gain"].items()) for t, d in tasks.items())
    return {"line": line, "tasks": tasks, "commands": commands}


def run_imitation(ctx: Context) -> dict:
    """Judge attribution and aggregation-aware imitation per task and judge (`eval/imitation.py`)."""
    from capo.data.schema import label_space
    from capo.evaluate.behaviour.imitation import judge_sources
    from capo.evaluate.behaviour.judges import TrainedJudge, histories_and_heldout, llm_judge

    args, out = ctx.args, ctx.dir("imitation")
    result, commands, lines = {}, [], []
    for task in args.tasks:
        space = label_space(task)
        history, heldout, heldout_items = histories_and_heldout(task, layout.task_dataset(args, task),
                                                                args.split_seed)
        items = {item.id: item for item in heldout_items}
        sources = generations(ctx, task)
        for judge_name in args.judges:
            # judge_limit cuts the LLM judge's sets only (its prompts hold 12 examples: seconds a response on CPU)
            limit = args.judge_limit if judge_name == "llm" else None
            if judge_name == "llm":
                judge = llm_judge(args.model, history, dtype=args.dtype, seed=0,
                                  cache=out / f"{task}_llm_judgements.json")  # a killed stage resumes from it
            else:
                judge = TrainedJudge(args.judge_features, with_label=True, seed=0).fit(history)
            real = heldout[:limit] if limit else heldout
            progress = bar(len(sources), f"imitation {task} {judge_name} judge", "set")
            judged = judge_sources(judge, real, items, space,
                                   {name: rows[:limit] if limit else rows for name, rows in sources.items()},
                                   ks=args.imitation_ks, seed=0, embeddings=args.embeddings,
                                   on_source=partial(progress.update, 1))
            progress.close()
            human = judged["human_heldout"]
            entry = {"task": task, "judge": judge_name, "features": args.judge_features, "judge_history": len(history),
                     **judged}
            write_json(out / f"{task}_{judge_name}.json", entry)
            generated = " ".join(f"--generated {name}={layout.generation_dir(ctx.root, task, name)}/generations.jsonl"
                                 for name in sources)
            commands.append(f"python eval/imitation.py --task {task} --dataset {layout.task_dataset(args, task)} "
                            f"--split_seed {args.split_seed} --judge "
                            f"{judge_name} --features {args.judge_features} "
                            + (f"--judge_model {args.model} --judge_dtype {args.dtype} " if judge_name == "llm" else "")
                            + (f"--limit {limit} " if limit else "")
                            + f"--ks {' '.join(map(str, args.imitation_ks))} "
                            + ("" if args.embeddings else "--no_embeddings ")
                            + f"{generated} --output {out / f'{task}_{judge_name}.json'}")
            result[f"{task}_{judge_name}"] = {"file": str((out / f"{task}_{judge_name}.json").relative_to(ctx.root)),
                                              "command": commands[-1]}
            # each target's ceiling and label JS are on the items its generated set covers (`judge_sources`)
            covered = sorted({row["basis"]["generated"]["items"] for per in judged["sources"].values()
                              for row in per.values() if "basis" in row})
            span = "" if not covered else f"{covered[0]}" if len(covered) == 1 else f"{covered[0]}-{covered[-1]}"
            lines.append(f"{task} {judge_name} judge: human held-out accuracy {human['accuracy']:.3f} "
                         f"(chance {human['chance']:.2f}, {judged['heldout_items']} items)"
                         + (f"; generated sets and their human ceilings on {span} items" if span else ""))
    return {"line": "; ".join(lines), "reports": result, "commands": commands}


def run_variability(ctx: Context) -> dict:
    """Explanation variability (`eval/variability.py`): per task, the modelled annotators' explanations on the
    held-out items the generation runs cover (written as a capo JSONL, so the quoted command reproduces the table)
    vs each generation run's; on the 341 items, humans vs the released LLM explanation files."""
    import dataclasses

    from capo.data.datasets import load_task_data
    from capo.data.formats.jsonl import item_to_json
    from capo.data.formats.mjd_files import load_model_explanations
    from capo.data.registry import load_items
    from capo.evaluate.behaviour.variability import pos_tagger

    args, out = ctx.args, ctx.dir("variability")
    tables, commands = {}, []
    for task in args.tasks:
        data = load_task_data(task, layout.task_dataset(args, task), args.split_seed)
        sources = generations(ctx, task)
        ids = {str(r["id"]) for rows in sources.values() for r in rows}
        items = [dataclasses.replace(item, annotations=[a for a in item.annotations if a.annotator in args.annotators])
                 for item in data.all_items() if item.id in ids]
        human_file = out / f"{task}_heldout_items.jsonl"
        write_jsonl(human_file, (item_to_json(item) for item in items))
        inputs = {item.id: " ".join(item.inputs.values()) for item in items}
        sets = {"human": {item.id: [a.explanation for a in item.annotations if a.explanation.strip()]
                          for item in items}}
        for name, rows in sources.items():  # as eval/variability.py's generated_sets
            grouped: dict[str, list[str]] = {}
            for row in rows:
                text = str(row.get("explanation") or "").strip()
                if row.get("parsed", True) and text and str(row.get("id")) in inputs:
                    grouped.setdefault(str(row.get("id")), []).append(text)
            sets[name] = grouped
        tables[task] = _variability_table(sets, inputs, args.embeddings, f"variability {task}")
        commands.append(f"python eval/variability.py --human {human_file} "
                        + " ".join(f"--generated {name}={layout.generation_dir(ctx.root, task, name)}/generations.jsonl"
                                   for name in sources) + ("" if args.embeddings else " --no_embeddings"))
    if "nli" in args.tasks and args.model_explanations:
        items = load_items("nli341")
        inputs = {item.id: " ".join(item.inputs.values()) for item in items}
        sets = {"human": {item.id: [a.explanation for a in item.annotations if a.explanation.strip()]
                          for item in items}}
        for name, path in named_paths(args.model_explanations, "model_explanations").items():
            sets[name] = {k: [e for e, _ in v] for k, v in load_model_explanations(path).items() if k in inputs}
        tables["nli341"] = _variability_table(sets, inputs, args.embeddings, "variability nli341")
        commands.append("python eval/variability.py --human nli341 "
                        + " ".join(f"--model_explanations {s}" for s in args.model_explanations)
                        + ("" if args.embeddings else " --no_embeddings"))
    for name, table in tables.items():
        write_json(out / f"{name}.json", {"table": table, "pos": pos_tagger() is not None})
    line = "; ".join(f"{name}: {len(table)} sources" for name, table in tables.items())
    return {"line": line, "tables": sorted(tables), "commands": commands}


def _variability_table(sets: dict[str, dict[str, list[str]]], inputs: dict[str, str], embeddings: bool,
                       desc: str) -> dict:
    """source -> every variability measure (a source with no explanation at all: items 0)."""
    from capo.evaluate.behaviour.variability import variability

    table, progress = {}, bar(len(sets), desc, "source")
    for name, by_item in sets.items():
        by_item = {k: v for k, v in by_item.items() if v}
        table[name] = variability(by_item, inputs, embeddings=embeddings) if by_item else {"items": 0.0}
        progress.update(1)
    progress.close()
    return table
