"""The study's stages, in order: data -> sft -> capo -> generation -> attribution -> imitation -> variability -> mjd ->
distributions -> finetune -> jury -> lewidi_explainers -> lewidi -> report (finetune, jury and lewidi_explainers off
by default).

Each stage is a small function of the run context that calls what its entry point calls (the recipes' argument
dataclasses and library functions, `capo.pipeline.launch`), writes into `<output_dir>/<stage>/`, and declares what
shapes its outputs (`capo.pipeline.cache.Stage`: config keys, input files, upstream stages). Each returns a summary
with `line` (printed when it finishes) and `commands` (the entry-point command lines that reproduce its outputs, which
the report quotes).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from capo.errors import DataError
from capo.io import atomic_write_text, iter_jsonl, read_json, write_json, write_jsonl
from capo.pipeline import layout
from capo.pipeline.arguments import named_paths, overrides
from capo.pipeline.cache import Context, Stage
from capo.pipeline.launch import CAPO, FINETUNE, GENERATE, MJD, PERSPECTIVIST, SFT, Job, command_line, launch
from capo.pipeline.progress import bar, counting_log
from capo.pipeline.report import write_report

# --- data ------------------------------------------------------------------------------------------------------


def data_files(args) -> list[str]:
    """The shipped data every stage reads (VariErr, the 341 items, ChaosNLI, LeWiDi): their content is the data
    stage's signature, so an edited file re-runs everything that reads it."""
    from capo.data.loaders import CHAOS_DIR, LEWIDI_DIR, NLI341_PATH, VARIERR_PATH

    files = [VARIERR_PATH, NLI341_PATH, *sorted(CHAOS_DIR.glob("*.json")), *sorted(LEWIDI_DIR.rglob("*.json"))]
    return [str(f) for f in files if f.is_file()]


def run_data(ctx: Context) -> dict:
    """Splits and per-annotator training histories (the SFT rows `data_prep/build_sft.py` writes), per task."""
    from capo.data.datasets import load_task_data
    from capo.evaluate.patterns import responses
    from capo.train.pairs import DEFAULT_VALIDITY, sft_rows

    args, out = ctx.args, ctx.dir("data")
    tasks, commands = {}, []
    for task in args.tasks:
        dataset = layout.task_dataset(args, task)
        data = load_task_data(task, dataset, args.split_seed)
        heldout = "test" if data.items("test") else "dev"
        per = {}
        for annotator in args.annotators:
            rows = sft_rows(data.items("train"), annotator, valid=DEFAULT_VALIDITY)
            path = out / task / f"history_{annotator}.jsonl"
            write_jsonl(path, rows)
            commands.append(f"python data_prep/build_sft.py --annotator {annotator} --task {task} --dataset {dataset} "
                            f"--split_seed {args.split_seed} --output {path}")
            per[annotator] = {"train_responses": len(responses(data.items("train"), [annotator])),
                              "valid_history": len(rows),
                              "heldout_responses": len(responses(data.items(heldout), [annotator]))}
        write_json(out / task / "splits.json", {"dataset": data.dataset, "split_seed": args.split_seed,
                                                "sha256": data.content_sha256(),
                                                "splits": {n: [i.id for i in data.items(n)] for n in data.splits}})
        tasks[task] = {"dataset": data.dataset, "sha256": data.content_sha256(), "heldout_split": heldout,
                       "items": {n: len(data.items(n)) for n in data.splits}, "annotators": per}
    line = "; ".join(f"{t}: {d['dataset']} " + "/".join(str(n) for n in d["items"].values()) + " train/dev/test items"
                     for t, d in tasks.items())
    return {"line": line, "tasks": tasks, "commands": commands}


# --- explainers ------------------------------------------------------------------------------------------------


def _use_cpu() -> str:
    # The same config on a CPU machine and on GPUs: the trainers' device follows the machine.
    import torch

    return "false" if torch.cuda.is_available() else "true"


def explainer_argv(ctx: Context, kind: str, unit: layout.Unit) -> list[str]:
    """recipes/sft.py or recipes/capo.py options of one adapter: its recipe config, the overrides, then what the
    pipeline sets (model, task, annotator, seed, output folder; resume from a checkpoint after a kill)."""
    args = ctx.args
    config, extra = (args.sft_config, args.sft_args) if kind == "sft" else (args.capo_config, args.capo_args)
    argv = ["--config", config, *overrides(extra, f"{kind}_args"), "--model_name_or_path", args.model,
            "--task", unit.task, "--dataset", layout.task_dataset(args, unit.task), "--annotator", unit.annotator,
            "--seed", str(unit.seed), "--split_seed", str(args.split_seed), "--use_cpu", _use_cpu(), "--resume_from_checkpoint", "true",
            "--output_dir", str(layout.adapter_dir(ctx.root, kind, unit))]
    if kind == "capo":
        argv += ["--init_from", "sft", "--sft_adapter", str(layout.adapter_dir(ctx.root, "sft", unit))]
    return argv


def _refused(err: DataError, field: str | None, job: Job) -> DataError:
    """A job's refusal as the pipeline's: an error located in a file (a recipe config line) stays as it is; any other
    (an override, a value the pipeline passes) names the pipeline field and the entry point that refused it."""
    return err if err.path is not None else DataError(f"{job.script} refuses it: {err}", field=field)


def plan_explainers(kind: str) -> Callable[[Context], None]:
    """Stage plan: the model exists, and the recipe parses its config with the overrides (before any stage runs)."""

    def plan(ctx: Context) -> None:
        from capo.io import check_model_path

        check_model_path(ctx.args.model)
        job = SFT if kind == "sft" else CAPO
        for unit in layout.units(ctx.args)[:1]:  # one parse checks the config and every override
            try:
                job.parse(explainer_argv(ctx, kind, unit))
            except DataError as err:
                raise _refused(err, f"{kind}_args", job) from None

    return plan


def train_explainers(kind: str) -> Callable[[Context], dict]:
    """Stage function: every (task, seed, annotator) adapter of `kind`; a finished one (its run manifest, written
    last) is kept, an interrupted one resumes from its last checkpoint."""

    def run(ctx: Context) -> dict:
        job: Job = SFT if kind == "sft" else CAPO
        units = layout.units(ctx.args)
        rows, commands = [], []
        progress = bar(len(units), kind, "adapter")
        for unit in units:
            folder = layout.adapter_dir(ctx.root, kind, unit)
            argv = explainer_argv(ctx, kind, unit)
            if (folder / "run_manifest.json").is_file():
                commands.append(command_line(ctx.args, job, argv))
            else:
                progress.write(f"{kind}: training {unit.name}")
                commands.append(launch(ctx.args, job, argv))
            manifest = read_json(folder / "run_manifest.json")
            # The last logged training loss, from the trainer state: a run resumed from its last checkpoint reports
            # train_loss 0 in its metrics (no step ran in that session), its log history is the whole run's.
            history = read_json(folder / "trainer_state.json").get("log_history", [])
            losses = [h["loss"] for h in history if "loss" in h]
            rows.append({"task": unit.task, "annotator": unit.annotator, "seed": unit.seed,
                         "folder": str(folder.relative_to(ctx.root)),
                         "rows": manifest.get("train_rows", manifest.get("train_pairs")),
                         "steps": max((h.get("step", 0) for h in history), default=0),
                         "train_loss": losses[-1] if losses else None,
                         "eval_loss": manifest.get("metrics", {}).get("eval_loss")})
            progress.update(1)
        progress.close()
        final = [r["train_loss"] for r in rows if r["train_loss"] is not None]
        line = (f"{len(rows)} {kind.upper()} adapters ({', '.join(ctx.args.tasks)}; "
                f"{' '.join(ctx.args.annotators)}{' + all' if ctx.args.conditioned else ''}; seeds "
                f"{' '.join(map(str, ctx.args.seeds))})"
                + (f", mean last logged train loss {sum(final) / len(final):.3f}" if final else ""))
        return {"line": line, "adapters": rows, "commands": commands}

    return run


# --- generation ------------------------------------------------------------------------------------------------


def plan_generation(ctx: Context) -> None:
    from capo.io import check_model_path

    check_model_path(ctx.args.model)
    for task in ctx.args.tasks:
        for argv in layout.generation_runs(ctx.args, ctx.root, task).values():
            try:
                GENERATE.parse(argv)
            except DataError as err:
                raise _refused(err, None, GENERATE) from None


def run_generation(ctx: Context) -> dict:
    """Every generation run (explainers, conditioned adapter, base model, prompting baselines) per task; a killed run
    resumes from its finished shards (`capo.runner`)."""
    runs, commands = [], []
    plan = {task: layout.generation_runs(ctx.args, ctx.root, task) for task in ctx.args.tasks}
    progress = bar(sum(map(len, plan.values())), "generation", "run")
    for task, named in plan.items():
        for name, argv in named.items():
            progress.write(f"generation: {task} {name}")
            commands.append(launch(ctx.args, GENERATE, argv))
            path = layout.generation_dir(ctx.root, task, name) / "generations.jsonl"
            records = [row for _, row in iter_jsonl(path)]
            runs.append({"task": task, "run": name, "records": len(records),
                         "unparsed": sum(not r.get("parsed") for r in records),
                         "file": str(path.relative_to(ctx.root)), "sha256": _sha256(path)})
            progress.update(1)
    progress.close()
    line = ", ".join(f"{r['task']} {r['run']}: {r['records']} records ({r['unparsed']} unparsed)" for r in runs)
    return {"line": line, "runs": runs, "commands": commands}


def _sha256(path: Path) -> str:
    from capo.manifest import file_sha256

    return file_sha256(path)


def _generations(ctx: Context, task: str) -> dict[str, list[dict]]:
    """Run name -> records, for every generation run of `task`."""
    return {name: [row for _, row in iter_jsonl(layout.generation_dir(ctx.root, task, name) / "generations.jsonl")]
            for name in layout.generation_runs(ctx.args, ctx.root, task)}


# --- attribution -----------------------------------------------------------------------------------------------


def attribution_adapters(ctx: Context) -> dict[str, str]:
    adapters = {kind: layout.adapter_template(ctx.root, kind) for kind in layout.KINDS}
    if ctx.args.conditioned:  # no {annotator}: scored as one explainer prompted with each target's id
        adapters["cond"] = str(ctx.root / "capo" / "seed{seed}" / "{task}" / "all")
    return adapters


def run_attribution(ctx: Context) -> dict:
    """Likelihood attribution per task (`eval/attribution.py`): base vs SFT vs CAPO on held-out items."""
    from capo.data.datasets import load_task_data
    from capo.data.heldout import select_heldout
    from capo.evaluate.attribution import adapter_folders, adapter_names, attribution_report, format_report

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


# --- imitation (judges) ----------------------------------------------------------------------------------------


def run_imitation(ctx: Context) -> dict:
    """Judge attribution and aggregation-aware imitation per task and judge (`eval/imitation.py`)."""
    from capo.data.schema import label_space
    from capo.evaluate.imitation import judge_sources
    from capo.evaluate.judges import TrainedJudge, histories_and_heldout, llm_judge

    args, out = ctx.args, ctx.dir("imitation")
    result, commands, lines = {}, [], []
    for task in args.tasks:
        space = label_space(task)
        history, heldout, heldout_items = histories_and_heldout(task, layout.task_dataset(args, task),
                                                                args.split_seed)
        items = {item.id: item for item in heldout_items}
        sources = _generations(ctx, task)
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


# --- variability -----------------------------------------------------------------------------------------------


def run_variability(ctx: Context) -> dict:
    """Explanation variability (`eval/variability.py`): per task, the modelled annotators' explanations on the
    held-out items the generation runs cover (written as a capo JSONL, so the quoted command reproduces the table)
    vs each generation run's; on the 341 items, humans vs the released LLM explanation files."""
    import dataclasses

    from capo.data.datasets import load_task_data
    from capo.data.loaders import item_to_json, load_dataset, load_model_explanations
    from capo.evaluate.variability import pos_tagger

    args, out = ctx.args, ctx.dir("variability")
    tables, commands = {}, []
    for task in args.tasks:
        data = load_task_data(task, layout.task_dataset(args, task), args.split_seed)
        sources = _generations(ctx, task)
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
        items = load_dataset("nli341")
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
    from capo.evaluate.variability import variability

    table, progress = {}, bar(len(sets), desc, "source")
    for name, by_item in sets.items():
        by_item = {k: v for k, v in by_item.items() if v}
        table[name] = variability(by_item, inputs, embeddings=embeddings) if by_item else {"items": 0.0}
        progress.update(1)
    progress.close()
    return table


# --- MJDs ------------------------------------------------------------------------------------------------------


def mjd_files(args) -> list[str]:
    """The model, the MJD configs and any explanation file they (or the overrides) name."""
    import yaml

    files = [args.model]
    for path in named_paths(args.mjd_runs, "mjd_runs").values():
        files.append(path)
        try:
            config = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            continue  # the run's own parsing reports it, located
        explanations = config.get("explanations") if isinstance(config, dict) else None
        if isinstance(explanations, str) and Path(explanations).is_file():
            files.append(explanations)
    files += [spec.split("=", 1)[1] for spec in args.mjd_args
              if spec.startswith("explanations=") and Path(spec.split("=", 1)[1]).is_file()]
    return files


def mjd_argv(ctx: Context, name: str, config: str) -> list[str]:
    return ["--config", config, *overrides(ctx.args.mjd_args, "mjd_args"), "--model_name_or_path", ctx.args.model,
            "--save_raw_scores", str(ctx.args.calibrate).lower(), "--output_dir", str(ctx.dir("mjd") / name)]


def plan_mjd(ctx: Context) -> None:
    for name, config in named_paths(ctx.args.mjd_runs, "mjd_runs").items():
        try:
            MJD.parse(mjd_argv(ctx, name, config))
        except DataError as err:
            raise _refused(err, "mjd_args", MJD) from None


def run_mjd_stage(ctx: Context) -> dict:
    """MJDs per configured run (`recipes/mjd.py`), each calibrated by cross-fitting (`eval/calibrate.py`)."""
    import math

    from capo.data.loaders import load_dataset

    runs, commands = {}, []
    for name, config in named_paths(ctx.args.mjd_runs, "mjd_runs").items():
        argv = mjd_argv(ctx, name, config)
        (parsed,) = MJD.parse(argv)
        n_items = len(load_dataset(parsed.dataset)[: parsed.limit])
        progress = bar(math.ceil(n_items / parsed.items_per_chunk), f"mjd {name}", "shard")
        commands.append(launch(ctx.args, MJD, argv, log=counting_log(progress, lambda m: m.startswith("["))))
        progress.close()
        folder = ctx.dir("mjd") / name
        entry = {"folder": str(folder.relative_to(ctx.root)), "items": n_items, "config": config,
                 "explanations": parsed.explanations, "mode": parsed.mode}
        if ctx.args.calibrate:
            entry["calibration"] = _calibrate(folder)
            commands.append(f"python eval/calibrate.py --raw {folder}/raw_scores.jsonl --human "
                            f"{folder}/human_chaosnli.jsonl --output {folder}/mjd_calibrated.jsonl")
        runs[name] = entry
    line = ", ".join(f"{name}: {e['items']} items" + (f", cross-fitted T {e['calibration']['temperature_mean']:.2f}"
                                                       if "calibration" in e else "") for name, e in runs.items())
    return {"line": line, "runs": runs, "commands": commands}


def _calibrate(folder: Path) -> dict:
    """eval/calibrate.py's report and calibrated MJDs for one run folder."""
    import numpy as np

    from capo.data.loaders import read_distributions, write_distributions
    from capo.evaluate.calibration import crossfit, label_scores, mjd_at, top_letter_shares
    from capo.evaluate.metrics import distribution_report

    raw = [row for _, row in iter_jsonl(folder / "raw_scores.jsonl")]
    scores, human = label_scores(raw), read_distributions(folder / "human_chaosnli.jsonl")
    ids = [i for i in scores if i in human]
    if len(ids) < 5:
        raise DataError(f"calibration needs at least 5 items with raw scores and ChaosNLI, got {len(ids)} (raise "
                        "the MJD limit or set calibrate false)", field="calibrate")
    calibrated, temperatures = crossfit(ids, scores, human, folds=5, seed=0)
    write_distributions(folder / "mjd_calibrated.jsonl", calibrated)
    h = np.array([human[i] for i in ids])
    rows = {f"T={t:g}": distribution_report(h, np.array([mjd_at(scores[i], t) for i in ids])) for t in (1.0, 20.0)}
    rows["T=cross-fitted"] = distribution_report(h, np.array([calibrated[i] for i in ids]))
    report = {"items": len(ids), "fold_temperatures": temperatures, "temperature_mean": float(np.mean(temperatures)),
              "top_letter_shares": top_letter_shares(raw), "rows": rows}
    write_json(folder / "calibration.json", report)
    return report


# --- distributions ---------------------------------------------------------------------------------------------


def run_distributions(ctx: Context) -> dict:
    """The 341-item baselines and every MJD (raw and calibrated) against ChaosNLI (`eval/distributions.py`)."""
    from capo.data.loaders import read_distributions
    from capo.evaluate.distributions import baseline_distributions, baseline_report, format_table, join
    from capo.evaluate.metrics import distribution_report

    out = ctx.dir("distributions")
    table = {name: {**row, "items": 341} for name, row in baseline_report(baseline_distributions()).items()}
    commands = ["python eval/distributions.py --baselines"]
    files_of: dict[str, str] = {}
    for name, entry in ctx.record("mjd")["summary"]["runs"].items():
        folder = ctx.root / entry["folder"]
        human = read_distributions(folder / "human_chaosnli.jsonl")
        files = {f"mjd {name}": folder / "mjd.jsonl"}
        if (folder / "mjd_calibrated.jsonl").is_file():
            files[f"mjd {name} calibrated"] = folder / "mjd_calibrated.jsonl"
        for label, path in files.items():
            model = read_distributions(path)
            ids, h, m = join(human, model, human_name=str(folder / "human_chaosnli.jsonl"), model_name=str(path))
            table[label] = {**distribution_report(h, m), "items": len(ids)}
            files_of[label] = str(path.relative_to(ctx.root))
            commands.append(f"python eval/distributions.py --human {folder}/human_chaosnli.jsonl --model {path}")
    write_json(out / "table.json", table)
    atomic_write_text(out / "table.md", format_table(table) + "\n")
    best = min((k for k in table if k.startswith("mjd ")), key=lambda k: table[k]["kl"], default=None)
    line = f"{len(table)} rows" + (f"; lowest-KL MJD: {best} (KL {table[best]['kl']:.4f})" if best else "")
    return {"line": line, "table": str((out / "table.json").relative_to(ctx.root)), "best_mjd": best,
            "best_mjd_file": files_of.get(best), "commands": commands}


# --- soft-label fine-tuning ------------------------------------------------------------------------------------


def finetune_argv(ctx: Context, source: str, name: str, seed: int) -> list[str]:
    return ["--config", ctx.args.finetune_config, *overrides(ctx.args.finetune_args, "finetune_args"),
            "--source", source, "--seed", str(seed), "--use_cpu", _use_cpu(),
            "--output_dir", str(ctx.dir("finetune") / f"{name}_s{seed}")]


def plan_finetune(ctx: Context) -> None:
    try:
        FINETUNE.parse(finetune_argv(ctx, "chaosnli", "chaosnli", ctx.args.seeds[0]))
    except DataError as err:
        raise _refused(err, "finetune_args", FINETUNE) from None
    # The best MJD (whichever run it is, known only after they all ran) is a training source over the 341 items:
    # an MJD run on other items or a subset would stop this stage hours later.
    from capo.data.loaders import load_dataset

    wanted = {item.id for item in load_dataset("nli341")}
    for name, config in named_paths(ctx.args.mjd_runs, "mjd_runs").items():
        (parsed,) = MJD.parse(mjd_argv(ctx, name, config))
        covered = {item.id for item in load_dataset(parsed.dataset)[: parsed.limit]}
        if not wanted <= covered:
            raise DataError(f"finetune trains on the best MJD over the 341 items, but MJD run {name!r} covers "
                            f"{len(wanted & covered)} of them ({parsed.dataset}"
                            + (f", limit {parsed.limit}" if parsed.limit is not None else "")
                            + "): set finetune false or run every MJD on all 341 items", field="finetune")


def run_finetune(ctx: Context) -> dict:
    """MiniLM fine-tuned on the lowest-KL MJD and on ChaosNLI's HJDs, per seed, scored on ChaosNLI dev and test
    (`recipes/finetune.py`; a killed run resumes from its last checkpoint)."""
    summary = ctx.record("distributions")["summary"]
    if not summary.get("best_mjd_file"):
        raise DataError("no MJD to fine-tune on", field="mjd_runs")
    sources = {"best_mjd": str(ctx.root / summary["best_mjd_file"]), "chaosnli": "chaosnli"}
    rows, commands = [], []
    progress = bar(len(sources) * len(ctx.args.seeds), "finetune", "run")
    for name, source in sources.items():
        for seed in ctx.args.seeds:
            argv = finetune_argv(ctx, source, name, seed)
            commands.append(launch(ctx.args, FINETUNE, argv))
            metrics = read_json(ctx.dir("finetune") / f"{name}_s{seed}" / "metrics.json")
            rows.append({"source": summary["best_mjd"] if name == "best_mjd" else name, "seed": seed,
                         "best_step": metrics["best_step"], "dev": metrics["dev"], "test": metrics["test"]})
            progress.update(1)
    progress.close()
    line = ", ".join(f"{r['source']} s{r['seed']}: test macro-F1 {r['test']['macro_f1']:.3f}, KL "
                     f"{r['test']['kl']:.3f}" for r in rows)
    return {"line": line, "rows": rows, "commands": commands}


# --- the explainer jury ----------------------------------------------------------------------------------------


def _explainer_predictors(ctx: Context) -> dict[str, str | None]:
    """Predictor name -> `--explainers` template: the base model alone (None), SFT and CAPO per seed, and the
    conditioned CAPO adapter per seed when there is one (a template without {annotator}: prompted with each id)."""
    from capo.data.schema import CONDITIONED

    seeds = ctx.args.seeds
    return {"base": None, **{f"{kind} s{seed}": layout.explainer_template(ctx.root, kind, seed)
                             for kind in layout.KINDS for seed in seeds},
            **{f"cond s{seed}": layout.explainer_template(ctx.root, "capo", seed).replace("{annotator}", CONDITIONED)
               for seed in (seeds if ctx.args.conditioned else ())}}


def _slug(name: str) -> str:
    return name.replace(" ", "_")


def run_jury_stage(ctx: Context) -> dict:
    """The explainer jury (`eval/jury.py`): per item of the 341, the annotators' label probabilities under their
    explainers averaged into one distribution, scored against ChaosNLI as the distributions stage scores the MJDs
    (`eval/distributions.py`); the base model alone, then SFT and CAPO per seed. Each explainer jury also has a
    held-out-only row: its distributions on the items none of its explainers trained on (their run manifests, as
    `run_jury` counts them), which is what `eval/jury.py --heldout_only true` writes (the same per-item scores, to
    float rounding, from one scoring pass instead of two)."""
    from capo.data.loaders import load_dataset, read_distributions, write_distributions
    from capo.evaluate.distributions import join
    from capo.evaluate.explainer_predictions import resolve_explainers, run_jury, training_overlap
    from capo.evaluate.metrics import distribution_report
    from capo.train.corpus_lm import pretraining_item_ids

    args, out = ctx.args, ctx.dir("jury")
    predictors = _explainer_predictors(ctx)
    items = load_dataset("nli341")
    pretrained = pretraining_item_ids(args.model)  # a corpus LM's pre-training items (none for any other model)
    table, notes, commands = {}, [], []

    def files(label: str) -> tuple[Path, Path]:
        return out / f"{_slug(label)}.jsonl", out / f"{_slug(label)}_human.jsonl"

    def score(label: str, jury: dict, human: dict, **extra) -> None:
        ids, h, m = join(human, jury)
        table[label] = {**distribution_report(h, m), "items": len(ids), **extra,
                        "in_base_pretraining": len(set(ids) & pretrained),
                        "file": str(files(label)[0].relative_to(ctx.root))}

    progress = bar(len(predictors), "jury", "jury")
    for name, template in predictors.items():
        label, heldout = f"jury {name}", f"jury {name} held-out only"
        output, human_file = files(label)
        report = run_jury(args.model, str(output), explainers=template, annotators=args.annotators,
                          human_output=str(human_file), dtype=args.dtype, batch_size=args.generate_batch_size,
                          log=progress.write)
        jury, human = read_distributions(output), read_distributions(human_file)
        score(label, jury, human, in_training=report["in_training"])
        command = (f"python eval/jury.py --model {args.model} " + (f"--explainers '{template}' " if template else "")
                   + f"--annotators {' '.join(args.annotators)} --dtype {args.dtype} --batch_size "
                   f"{args.generate_batch_size}")
        commands.append(f"{command} --output {output} --human_output {human_file} && python eval/distributions.py "
                        f"--human {human_file} --model {output}")
        if template:
            trained = set(training_overlap(items, resolve_explainers(template, "nli", args.annotators))["ids"])
            if trained and len(trained) < len(jury):
                kept = {i: d for i, d in jury.items() if i not in trained}
                kept_human = {i: d for i, d in human.items() if i not in trained}
                o, hf = files(heldout)
                write_distributions(o, kept)
                write_distributions(hf, kept_human)
                score(heldout, kept, kept_human, in_training=0, left_out=len(trained))
                commands.append(f"{command} --heldout_only true --output {o} --human_output {hf} && python "
                                f"eval/distributions.py --human {hf} --model {o}")
            else:
                notes.append(f"no `{heldout}` row: {len(trained)} of the {len(jury)} items are in its explainers' "
                             "training data" + (" (the full row is held out)" if not trained else ""))
        progress.update(1)
    progress.close()
    write_json(out / "table.json", table)
    best = min((k for k in table if k != "jury base" and not k.endswith("held-out only")),
               key=lambda k: table[k]["kl"], default=None)
    line = (f"{len(table)} rows; base KL {table['jury base']['kl']:.4f}"
            + (f", lowest-KL explainer jury: {best} (KL {table[best]['kl']:.4f}, {table[best]['in_training']} of "
               f"{table[best]['items']} items in its training data)" if best else ""))
    return {"line": line, "table": str((out / "table.json").relative_to(ctx.root)), "notes": notes,
            "commands": commands}


# --- LeWiDi: the explainers as annotators ----------------------------------------------------------------------


def explainers_skipped(args, dataset: str) -> str | None:
    """Why the pipeline's SFT and CAPO explainers cannot predict LeWiDi `dataset` (None: they can). Adapters that
    trained on any item of the scored or the decision split are refused (`predict_lewidi`): the explainers must have
    trained on that data set's own train split (Par: the paraphrase explainers always do; VEN: with nli_dataset
    lewidi-ven), and every annotator of the data set needs one."""
    from capo.data.datasets import load_task_data
    from capo.data.lewidi import lewidi_split_path, read_lewidi
    from capo.evaluate.explainer_predictions import LEWIDI_TASK, capo_annotator, capo_item

    task, name = LEWIDI_TASK[dataset], dataset.upper()
    if task not in args.tasks:
        return f"no {task} explainers are trained (tasks: {', '.join(args.tasks)})"
    items = [item for split in _lewidi_splits(dataset) for item in read_lewidi(lewidi_split_path(dataset, split),
                                                                               dataset)]
    trained_on = layout.task_dataset(args, task)
    if trained_on != f"lewidi-{dataset}":
        train = {item.id for item in load_task_data(task, trained_on, args.split_seed).items("train")}
        ids = {capo_item(item).id for item in items}
        return (f"the {task} explainers trained on {trained_on} (split seed {args.split_seed}), whose train split "
                f"holds {len(ids & train)} of the {len(ids)} {name} {'/'.join(_lewidi_splits(dataset))} items "
                f"(scoring them would be scoring training data); nli_dataset: lewidi-{dataset} trains them on "
                f"LeWiDi's own train split")
    missing = sorted({capo_annotator(a) for item in items for a in item.annotators} - set(args.annotators))
    if missing:
        return f"{' '.join(missing)} annotate {name} but have no explainer (annotators: {' '.join(args.annotators)})"
    return None


def run_lewidi_explainers(ctx: Context) -> dict:
    """The base model and the SFT / CAPO explainers per seed as LeWiDi annotators (`eval/lewidi.py predict
    --model`): per (item, annotator) the label probabilities under the annotator's explainer, the VEN threshold /
    Par rule chosen on dev, scored as the `lewidi` stage scores its constants. No scored item's labels choose its
    own decision: dev is scored with decisions cross-fitted over item folds of dev, test with the one fitted on all
    of dev (each row's `decision_fit` says which).
    Explainers that cannot be scored honestly on a data set (`explainers_skipped`) are left out, with the reason."""
    from capo.evaluate.explainer_predictions import predict_lewidi

    args, out = ctx.args, ctx.dir("lewidi_explainers")
    predictors = _explainer_predictors(ctx)
    skipped = {d: reason for d in args.lewidi_datasets if (reason := explainers_skipped(args, d))}
    plan = [(dataset, split, name) for dataset in args.lewidi_datasets for split in _lewidi_splits(dataset)
            for name in predictors if name == "base" or dataset not in skipped]
    rows, commands = [], []
    progress = bar(len(plan), "lewidi explainers", "run")
    for dataset, split, name in plan:
        output = out / f"{dataset}_{split}_{_slug(name)}.jsonl"
        template = predictors[name]
        report = predict_lewidi(dataset, split, str(output), model=args.model, explainers=template,
                                decision="dev", decision_split="dev", dtype=args.dtype,
                                batch_size=args.generate_batch_size, log=progress.write)
        write_json(out / f"{dataset}_{split}_{_slug(name)}_report.json", report)
        rows.append({"dataset": dataset, "split": split, "predictor": name, **_scores(report["scores"]),
                     "soft_mean": report["soft_mean"], "decision": report["decision"],
                     "decision_fit": report["decision_fit"],
                     **({"fold_decisions": report["fold_decisions"]} if "fold_decisions" in report else {}),
                     "in_base_pretraining": report["in_base_pretraining"]})
        commands.append(f"python eval/lewidi.py predict --dataset {dataset} --split {split} --decision_split dev "
                        f"--model {args.model} " + (f"--explainers '{template}' " if template else "")
                        + f"--dtype {args.dtype} --batch_size {args.generate_batch_size} --output {output}")
        progress.update(1)
    progress.close()
    write_json(out / "scores.json", {"rows": rows, "skipped": skipped})
    line = ", ".join(f"{r['dataset']} {r['split']} {r['predictor']} {r['perspectivist']:.3f}" for r in rows)
    line = "perspectivist score: " + line + "".join(f"; {d.upper()} explainers skipped: {reason}"
                                                   for d, reason in skipped.items())
    return {"line": line, "rows": rows, "skipped": skipped, "commands": commands}


# --- LeWiDi ----------------------------------------------------------------------------------------------------


def _lewidi_splits(dataset: str) -> list[str]:
    """The labelled splits scored: VEN dev and test; Par dev (its test split is held back)."""
    return ["dev", "test"] if dataset == "ven" else ["dev"]


def perspectivist_argv(ctx: Context, dataset: str, seed: int) -> list[str]:
    return ["--config", ctx.args.perspectivist_config, *overrides(ctx.args.perspectivist_args, "perspectivist_args"),
            "--dataset", dataset, "--predict_splits", ",".join(_lewidi_splits(dataset)), "--seed", str(seed),
            "--use_cpu", _use_cpu(), "--output_dir", str(ctx.dir("lewidi") / "perspectivist" / f"{dataset}_s{seed}")]


def plan_lewidi(ctx: Context) -> None:
    if ctx.args.perspectivist:
        for dataset in ctx.args.lewidi_datasets:
            try:
                PERSPECTIVIST.parse(perspectivist_argv(ctx, dataset, ctx.args.seeds[0]))
            except DataError as err:
                raise _refused(err, "perspectivist_args", PERSPECTIVIST) from None


def run_lewidi(ctx: Context) -> dict:
    """LeWiDi 2025 scores (`eval/lewidi.py predict/score`): the most-frequent and random constants, and the
    perspectivist encoder per seed when configured (`recipes/perspectivist.py`: its VEN threshold / Par rule
    cross-fitted over item folds of dev for the dev rows, fitted on all of dev for test)."""
    from capo.data.lewidi import lewidi_split_path, read_lewidi
    from capo.evaluate.lewidi import (
        most_frequent_predictions,
        random_predictions,
        score,
        write_annotator_predictions,
    )

    args, out = ctx.args, ctx.dir("lewidi")
    rows, commands = [], []
    for dataset in args.lewidi_datasets:
        train = read_lewidi(lewidi_split_path(dataset, "train"), dataset)
        for split in _lewidi_splits(dataset):
            items = read_lewidi(lewidi_split_path(dataset, split), dataset)
            for name, predictions in (("most_frequent", most_frequent_predictions(train, items)),
                                      ("random", random_predictions(items, 0))):
                path = out / f"{dataset}_{split}_{name}.jsonl"
                write_annotator_predictions(path, predictions, dataset)
                rows.append({"dataset": dataset, "split": split, "predictor": name,
                             **_scores(score(items, predictions, predictions_path=path))})
                commands.append(f"python eval/lewidi.py predict --dataset {dataset} --split {split} --baseline "
                                f"{name} --output {path} && python eval/lewidi.py score --dataset {dataset} --split "
                                f"{split} --predictions {path}")
        if args.perspectivist:
            for seed in args.seeds:
                argv = perspectivist_argv(ctx, dataset, seed)
                commands.append(launch(args, PERSPECTIVIST, argv))
                metrics = read_json(Path(argv[argv.index("--output_dir") + 1]) / "metrics.json")
                for split, entry in metrics["splits"].items():
                    if "scores" in entry:
                        # the decision fitted on all of dev; dev's own items are scored cross-fitted over its folds
                        fit = {key: entry[key] for key in ("decision_fit", "fold_decisions") if key in entry}
                        rows.append({"dataset": dataset, "split": split, "predictor": f"perspectivist s{seed}",
                                     **_scores(entry["scores"]), "decision": metrics["decision"], **fit})
    write_json(out / "scores.json", rows)
    line = ", ".join(f"{r['dataset']} {r['split']} {r['predictor']} {r['perspectivist']:.3f}" for r in rows)
    return {"line": "perspectivist score: " + line, "rows": rows, "commands": commands}


def _scores(report: dict) -> dict:
    return {"perspectivist": report["perspectivist"], "soft": report["soft"], "items": report["n_items"]}


# --- the list --------------------------------------------------------------------------------------------------


TRAIN_KEYS = ("model", "tasks", "annotators", "seeds", "split_seed", "nli_dataset", "conditioned", "launcher",
              "launcher_args")
# The jury and the LeWiDi explainers: the explainers of these keys (through sft/capo), scored with these.
SCORING_KEYS = ("model", "tasks", "annotators", "seeds", "split_seed", "nli_dataset", "conditioned", "dtype",
                "generate_batch_size")

STAGES: tuple[Stage, ...] = (
    Stage("data", run_data, keys=("tasks", "annotators", "split_seed", "nli_dataset"), files=data_files),
    Stage("sft", train_explainers("sft"), keys=(*TRAIN_KEYS, "sft_args"), inputs=("data",),
          files=lambda a: [a.model, a.sft_config], plan=plan_explainers("sft")),
    Stage("capo", train_explainers("capo"), keys=(*TRAIN_KEYS, "capo_args"), inputs=("data", "sft"),
          files=lambda a: [a.model, a.capo_config], plan=plan_explainers("capo")),
    Stage("generation", run_generation,
          keys=(*TRAIN_KEYS, "dtype", "generate_kinds", "generate_base", "prompting_shots",
                "prompting_response_prefix", "prompting_stop", "generate_limit", "generate_max_new_tokens",
                "generate_batch_size", "generate_shard_size"),
          inputs=("data", "sft", "capo"), files=lambda a: [a.model], plan=plan_generation,
          enabled=lambda a: bool(a.generate_kinds or a.generate_base or a.prompting_shots or a.conditioned)),
    Stage("attribution", run_attribution,
          keys=("model", "tasks", "annotators", "seeds", "split_seed", "nli_dataset", "conditioned",
                "attribution_splits", "attribution_limit", "exclude_pretrained", "dtype"),
          inputs=("data", "sft", "capo"), files=lambda a: [a.model]),
    Stage("imitation", run_imitation,
          keys=("tasks", "split_seed", "nli_dataset", "judges", "judge_features", "judge_limit", "imitation_ks",
                "embeddings", "dtype"),
          inputs=("data", "generation"), files=lambda a: [a.model] if "llm" in a.judges else []),
    Stage("variability", run_variability,
          keys=("tasks", "annotators", "split_seed", "nli_dataset", "embeddings", "model_explanations"),
          inputs=("data", "generation"),
          files=lambda a: list(named_paths(a.model_explanations, "model_explanations").values())),
    Stage("mjd", run_mjd_stage, keys=("mjd_runs", "mjd_args", "calibrate", "launcher", "launcher_args"),
          inputs=("data",), files=mjd_files, plan=plan_mjd, enabled=lambda a: bool(a.mjd_runs)),
    Stage("distributions", run_distributions, inputs=("data", "mjd")),
    Stage("finetune", run_finetune, keys=("finetune", "finetune_args", "seeds"), inputs=("mjd", "distributions"),
          files=lambda a: [a.finetune_config], plan=plan_finetune, enabled=lambda a: a.finetune),
    # The explainers' label probabilities: the jury (its table joins the MJDs' in the report; it does not read
    # them, so a changed MJD run leaves it cached) and the LeWiDi predictors (beside the lewidi stage's constants).
    Stage("jury", run_jury_stage, keys=SCORING_KEYS, inputs=("data", "sft", "capo"), files=lambda a: [a.model],
          enabled=lambda a: a.jury),
    Stage("lewidi_explainers", run_lewidi_explainers, keys=(*SCORING_KEYS, "lewidi_datasets"),
          inputs=("data", "sft", "capo"), files=lambda a: [a.model], enabled=lambda a: a.lewidi_explainers),
    Stage("lewidi", run_lewidi, keys=("lewidi_datasets", "perspectivist", "perspectivist_args", "seeds"),
          inputs=("data",), files=lambda a: [a.perspectivist_config] if a.perspectivist else [], plan=plan_lewidi,
          enabled=lambda a: bool(a.lewidi_datasets)),
)
STAGES = (*STAGES, Stage("report", write_report, inputs=tuple(s.name for s in STAGES), optional_inputs=True))
STAGE_NAMES = tuple(s.name for s in STAGES)
