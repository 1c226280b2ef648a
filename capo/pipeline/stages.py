"""The study's stages, in order: data -> sft -> capo -> generation -> attribution -> imitation -> variability -> mjd ->
distributions -> finetune (off by default) -> jury (issue 11, off) -> lewidi_explainers (issue 11, off) -> lewidi ->
report.

Each stage is a small function of the run context that calls what its entry point calls (the recipes' argument
dataclasses and library functions, `capo.pipeline.launch`), writes into `<output_dir>/<stage>/`, and declares what
shapes its outputs (`capo.pipeline.cache.Stage`: config keys, input files, upstream stages). Each returns a summary
with `line` (printed when it finishes) and `commands` (the entry-point command lines that reproduce its outputs, which
the report quotes).
"""

from __future__ import annotations

from collections.abc import Callable
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
        data = load_task_data(task, None, args.split_seed)
        heldout = "test" if data.items("test") else "dev"
        per = {}
        for annotator in args.annotators:
            rows = sft_rows(data.items("train"), annotator, valid=DEFAULT_VALIDITY)
            path = out / task / f"history_{annotator}.jsonl"
            write_jsonl(path, rows)
            commands.append(f"python data_prep/build_sft.py --annotator {annotator} --task {task} --split_seed "
                            f"{args.split_seed} --output {path}")
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
            "--task", unit.task, "--annotator", unit.annotator, "--seed", str(unit.seed),
            "--split_seed", str(args.split_seed), "--use_cpu", _use_cpu(), "--resume_from_checkpoint", "true",
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
        data = load_task_data(task, None, args.split_seed)
        items = [item for split in args.attribution_splits for item in select_heldout(data, split, folders)]
        progress = bar(len(set(folders.values())), f"attribution {task}", "model")
        report = attribution_report(args.model, adapters, items, seeds=args.seeds, annotators=args.annotators,
                                    task=task, exclude_pretrained=args.exclude_pretrained,
                                    log=counting_log(progress, lambda m: m.startswith("scored ")))
        progress.close()
        report.update(model=args.model, adapters=adapters, splits=args.attribution_splits, task=task,
                      dataset=data.dataset, exclude_pretrained=args.exclude_pretrained)
        write_json(out / f"{task}.json", report)
        atomic_write_text(out / f"{task}.md", format_report(report, list(adapters)) + "\n")
        commands.append(" ".join(["python eval/attribution.py --model", args.model,
                                  *(f"--adapter '{k}={v}'" for k, v in adapters.items()),
                                  "--seeds", *map(str, args.seeds), "--annotators", *args.annotators, "--task", task,
                                  "--split_seed", str(args.split_seed), "--splits", *args.attribution_splits,
                                  "--exclude_pretrained", str(args.exclude_pretrained).lower(),
                                  "--output", str(out / f"{task}.json")]))
        gains = {t: row["capo"]["gain"]["gain"] for t, row in report["annotators"].items()}
        tasks[task] = {"items": report["items"], "capo_gain": gains}
    line = "; ".join(f"{t}: {d['items']} items, CAPO gain over base "
                     + ", ".join(f"{a} {g:+.3f}" for a, g in d["capo_gain"].items()) for t, d in tasks.items())
    return {"line": line, "tasks": tasks, "commands": commands}


# --- imitation (judges) ----------------------------------------------------------------------------------------


def run_imitation(ctx: Context) -> dict:
    """Judge attribution and aggregation-aware imitation per task and judge (`eval/imitation.py`)."""
    import numpy as np

    from capo.data.schema import label_space
    from capo.evaluate.imitation import generated_responses, imitation_report, target_of
    from capo.evaluate.judges import TrainedJudge, histories_and_heldout, judge_report, llm_judge

    args, out = ctx.args, ctx.dir("imitation")
    result, commands, lines = {}, [], []
    for task in args.tasks:
        space = label_space(task)
        history, heldout, heldout_items = histories_and_heldout(task, None, args.split_seed)
        items = {item.id: item for item in heldout_items}
        sources = _generations(ctx, task)
        for judge_name in args.judges:
            if judge_name == "llm":
                judge = llm_judge(args.model, history, dtype=args.dtype, seed=0)
            else:
                judge = TrainedJudge(args.judge_features, with_label=True, seed=0).fit(history)
            real = heldout[: args.judge_limit] if args.judge_limit else heldout
            progress = bar(len(sources) + 1, f"imitation {task} {judge_name} judge", "set")
            human = judge_report(judge.log_proba(real), [r.annotator for r in real], seed=0)
            progress.update(1)
            entry = {"task": task, "judge": judge_name, "features": args.judge_features, "judge_history": len(history),
                     "human_heldout": human, "sources": {}, "confusion": {}}
            for name, rows in sources.items():
                rows = rows[: args.judge_limit] if args.judge_limit else rows
                by_target: dict[str | None, list[dict]] = {}
                for row in rows:
                    by_target.setdefault(target_of(row), []).append(row)
                per, targeted = {}, []
                for target, group in by_target.items():
                    responses, unparsed = generated_responses(group, items, space)
                    if not responses:
                        per[str(target)] = {"generated": 0, "unparsed": unparsed}
                        continue
                    attributed = np.bincount(judge.log_proba(responses).argmax(axis=1),
                                             minlength=len(judge.classes)) / len(responses)
                    row = {"generated": len(responses), "unparsed": unparsed,
                           "attributed": dict(zip(judge.classes, attributed.round(4).tolist(), strict=True))}
                    if target is not None:
                        targeted.extend(responses)
                        row.update(imitation_report(target, responses, real, judge, space, ks=args.imitation_ks,
                                                    seed=0, embeddings=args.embeddings))
                    per[str(target)] = row
                entry["sources"][name] = per
                if targeted:
                    entry["confusion"][name] = judge_report(judge.log_proba(targeted),
                                                            [x.annotator for x in targeted], seed=0)
                progress.update(1)
            progress.close()
            write_json(out / f"{task}_{judge_name}.json", entry)
            generated = " ".join(f"--generated {name}={layout.generation_dir(ctx.root, task, name)}/generations.jsonl"
                                 for name in sources)
            commands.append(f"python eval/imitation.py --task {task} --split_seed {args.split_seed} --judge "
                            f"{judge_name} --features {args.judge_features} "
                            + (f"--judge_model {args.model} --judge_dtype {args.dtype} " if judge_name == "llm" else "")
                            + (f"--limit {args.judge_limit} " if args.judge_limit else "")
                            + f"--ks {' '.join(map(str, args.imitation_ks))} "
                            + ("" if args.embeddings else "--no_embeddings ")
                            + f"{generated} --output {out / f'{task}_{judge_name}.json'}")
            result[f"{task}_{judge_name}"] = {"file": str((out / f"{task}_{judge_name}.json").relative_to(ctx.root)),
                                              "command": commands[-1]}
            lines.append(f"{task} {judge_name} judge: human held-out accuracy {human['accuracy']:.3f} "
                         f"(chance {human['chance']:.2f})")
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
        data = load_task_data(task, None, args.split_seed)
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


# --- places for issue 11 (off: arguments refuse to switch them on until they are built) -------------------------


def not_built(what: str) -> Callable[[Context], dict]:
    """The stage function of a place kept for work not built yet (its argument refuses to switch it on)."""

    def run(ctx: Context) -> dict:
        raise DataError(f"{what} is not built yet (issue 11)")

    return run


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
    perspectivist encoder per seed when configured (`recipes/perspectivist.py`)."""
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
                        rows.append({"dataset": dataset, "split": split, "predictor": f"perspectivist s{seed}",
                                     **_scores(entry["scores"])})
    write_json(out / "scores.json", rows)
    line = ", ".join(f"{r['dataset']} {r['split']} {r['predictor']} {r['perspectivist']:.3f}" for r in rows)
    return {"line": "perspectivist score: " + line, "rows": rows, "commands": commands}


def _scores(report: dict) -> dict:
    return {"perspectivist": report["perspectivist"], "soft": report["soft"], "items": report["n_items"]}


# --- the list --------------------------------------------------------------------------------------------------


TRAIN_KEYS = ("model", "tasks", "annotators", "seeds", "split_seed", "conditioned", "launcher", "launcher_args")

STAGES: tuple[Stage, ...] = (
    Stage("data", run_data, keys=("tasks", "annotators", "split_seed"), files=data_files),
    Stage("sft", train_explainers("sft"), keys=(*TRAIN_KEYS, "sft_args"), inputs=("data",),
          files=lambda a: [a.model, a.sft_config], plan=plan_explainers("sft")),
    Stage("capo", train_explainers("capo"), keys=(*TRAIN_KEYS, "capo_args"), inputs=("data", "sft"),
          files=lambda a: [a.model, a.capo_config], plan=plan_explainers("capo")),
    Stage("generation", run_generation,
          keys=(*TRAIN_KEYS, "dtype", "generate_kinds", "generate_base", "prompting_shots", "generate_limit",
                "generate_max_new_tokens", "generate_batch_size", "generate_shard_size"),
          inputs=("data", "sft", "capo"), files=lambda a: [a.model], plan=plan_generation,
          enabled=lambda a: bool(a.generate_kinds or a.generate_base or a.prompting_shots or a.conditioned)),
    Stage("attribution", run_attribution,
          keys=("model", "tasks", "annotators", "seeds", "split_seed", "conditioned", "attribution_splits",
                "exclude_pretrained"),
          inputs=("data", "sft", "capo"), files=lambda a: [a.model]),
    Stage("imitation", run_imitation,
          keys=("tasks", "split_seed", "judges", "judge_features", "judge_limit", "imitation_ks", "embeddings",
                "dtype"),
          inputs=("data", "generation"), files=lambda a: [a.model] if "llm" in a.judges else []),
    Stage("variability", run_variability,
          keys=("tasks", "annotators", "split_seed", "embeddings", "model_explanations"),
          inputs=("data", "generation"),
          files=lambda a: list(named_paths(a.model_explanations, "model_explanations").values())),
    Stage("mjd", run_mjd_stage, keys=("mjd_runs", "mjd_args", "calibrate", "launcher", "launcher_args"),
          inputs=("data",), files=mjd_files, plan=plan_mjd, enabled=lambda a: bool(a.mjd_runs)),
    Stage("distributions", run_distributions, inputs=("data", "mjd")),
    Stage("finetune", run_finetune, keys=("finetune", "finetune_args", "seeds"), inputs=("mjd", "distributions"),
          files=lambda a: [a.finetune_config], plan=plan_finetune, enabled=lambda a: a.finetune),
    # Issue 11 is building the explainer jury (eval/jury.py; jury vs MJD on the 341 items) and the explainers as
    # LeWiDi per-annotator predictors: their stages go here, fed by sft/capo (and mjd for the comparison).
    Stage("jury", not_built("the explainer jury"), keys=("jury",), inputs=("sft", "capo", "mjd"),
          enabled=lambda a: a.jury),
    Stage("lewidi_explainers", not_built("the LeWiDi explainer predictors"), keys=("lewidi_explainers",),
          inputs=("sft", "capo"), enabled=lambda a: a.lewidi_explainers),
    Stage("lewidi", run_lewidi, keys=("lewidi_datasets", "perspectivist", "perspectivist_args", "seeds"),
          inputs=("data",), files=lambda a: [a.perspectivist_config] if a.perspectivist else [], plan=plan_lewidi,
          enabled=lambda a: bool(a.lewidi_datasets)),
)
STAGES = (*STAGES, Stage("report", write_report, inputs=tuple(s.name for s in STAGES), optional_inputs=True))
STAGE_NAMES = tuple(s.name for s in STAGES)
