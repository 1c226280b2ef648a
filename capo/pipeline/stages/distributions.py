"""Distribution stages: MJDs (`recipes/mjd.py`) and their calibration (`eval/calibrate.py`), MJD and jury
distributions against ChaosNLI (`eval/distributions.py`), soft-label fine-tuning (`recipes/finetune.py`), the
explainer jury (`eval/jury.py`). Each launches those entry points and reads the files they write.
"""

from __future__ import annotations

from pathlib import Path

from capo.errors import DataError
from capo.io import atomic_write_text, read_json, write_json
from capo.pipeline.arguments import named_paths, overrides
from capo.pipeline.cache import Context
from capo.pipeline.launch import CALIBRATE, DISTRIBUTIONS, FINETUNE, JURY, MJD, launch
from capo.pipeline.progress import bar
from capo.pipeline.stages.common import explainer_predictors, refused, slug, use_cpu


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
            raise refused(err, "mjd_args", MJD) from None


def run_mjd_stage(ctx: Context) -> dict:
    """MJDs per configured run (`recipes/mjd.py`), each calibrated by cross-fitting (`eval/calibrate.py`)."""
    from capo.data.registry import load_items

    runs, commands = {}, []
    for name, config in named_paths(ctx.args.mjd_runs, "mjd_runs").items():
        argv = mjd_argv(ctx, name, config)
        (parsed,) = MJD.parse(argv)
        n_items = len(load_items(parsed.dataset)[: parsed.limit])
        commands.append(launch(ctx.args, MJD, argv))  # its own progress bar
        folder = ctx.dir("mjd") / name
        entry = {"folder": str(folder.relative_to(ctx.root)), "items": n_items, "config": config,
                 "explanations": parsed.explanations, "mode": parsed.mode}
        if ctx.args.calibrate:
            # The items the MJD run wrote a ChaosNLI HJD for (--allow_partial: a data set may lack some).
            calibrate = ["--raw", str(folder / "raw_scores.jsonl"), "--human", str(folder / "human_chaosnli.jsonl"),
                         "--allow_partial", "true", "--output", str(folder / "mjd_calibrated.jsonl"),
                         "--report", str(folder / "calibration.json")]
            try:
                commands.append(launch(ctx.args, CALIBRATE, calibrate))
            except DataError as err:  # e.g. too few items for its folds: name the key that asked for calibration
                raise err.at(field="calibrate") from None
            entry["calibration"] = read_json(folder / "calibration.json")
        runs[name] = entry
    line = ", ".join(f"{name}: {e['items']} items" + (f", cross-fitted T {e['calibration']['temperature_mean']:.2f}"
                                                       if "calibration" in e else "") for name, e in runs.items())
    return {"line": line, "runs": runs, "commands": commands}


def _compare(ctx: Context, argv: list[str], report: Path) -> tuple[dict, str]:
    """`eval/distributions.py argv --count_items true --report <report>`: (its rows, its command line)."""
    command = launch(ctx.args, DISTRIBUTIONS, [*argv, "--count_items", "true", "--report", str(report)])
    return read_json(report), command


def run_distributions(ctx: Context) -> dict:
    """The 341-item baselines (the constants `uniform` and `label_prior` among them) and every MJD (raw and
    calibrated) against ChaosNLI (`eval/distributions.py`); per MJD run, its estimator variants from its raw scores
    (`--raw`; "n/a (no raw scores)" where it saved none), and the constants on its items where they are not the
    341. `notes`: the table's caption sentences."""
    from capo.data.distributions import read_distributions
    from capo.data.registry import load_items
    from capo.evaluate.distributions.compare import (
        CONSTANTS,
        VARIANTS_NOTE,
        chaosnli_dev_items,
        constants_note,
        format_table,
    )
    from capo.mjd.estimate import VARIANTS

    out = ctx.dir("distributions")
    table, command = _compare(ctx, ["--baselines"], out / "baselines.json")
    commands = [command]
    files_of: dict[str, str] = {}
    baseline_ids = {item.id for item in load_items("nli341")}  # what `--baselines` scores
    notes = [constants_note(baseline_ids)]
    for name, entry in ctx.record("mjd")["summary"]["runs"].items():
        folder = ctx.root / entry["folder"]
        human = folder / "human_chaosnli.jsonl"
        files = {f"mjd {name}": folder / "mjd.jsonl"}
        if (folder / "mjd_calibrated.jsonl").is_file():
            files[f"mjd {name} calibrated"] = folder / "mjd_calibrated.jsonl"
        for label, path in files.items():
            variants = []
            if label == f"mjd {name}":  # the run's own estimator variants (the calibrated file has none)
                raw = folder / "raw_scores.jsonl"
                variants = ["--raw", str(raw)] if raw.is_file() else ["--mjd_variants", "true"]
            rows, command = _compare(ctx, ["--human", str(human), "--model", str(path), *variants],
                                     out / f"{slug(label)}.json")
            table[label] = rows[path.stem]
            files_of[label] = str(path.relative_to(ctx.root))
            commands.append(command)
            if variants:
                table |= {f"{label} {v}": rows[f"{path.stem} {v}"] for v in VARIANTS}
                ids = set(read_distributions(human))
                if ids != baseline_ids:  # the constants on the run's own items
                    table |= {f"{c} (mjd {name} items)": rows[c] for c in CONSTANTS}
                    n_dev = chaosnli_dev_items(ids)
                    notes.append(f"`uniform/label_prior (mjd {name} items)`: the same constants on that run's {len(ids)} "
                                 "items" + (f", the label prior in-sample for {n_dev} of them (ChaosNLI dev items)"
                                            if n_dev else ""))
    if files_of:
        notes.append(VARIANTS_NOTE)
    write_json(out / "table.json", table)
    atomic_write_text(out / "table.md", format_table(table) + "\n")
    best = min(files_of, key=lambda k: table[k]["kl"], default=None)  # an MJD file, not a variant row
    line = f"{len(table)} rows" + (f"; lowest-KL MJD: {best} (KL {table[best]['kl']:.4f})" if best else "")
    return {"line": line, "table": str((out / "table.json").relative_to(ctx.root)), "best_mjd": best,
            "best_mjd_file": files_of.get(best), "commands": commands, "notes": notes}


def finetune_argv(ctx: Context, source: str, name: str, seed: int) -> list[str]:
    return ["--config", ctx.args.finetune_config, *overrides(ctx.args.finetune_args, "finetune_args"),
            "--source", source, "--seed", str(seed), "--use_cpu", use_cpu(),
            "--output_dir", str(ctx.dir("finetune") / f"{name}_s{seed}")]


def plan_finetune(ctx: Context) -> None:
    try:
        FINETUNE.parse(finetune_argv(ctx, "chaosnli", "chaosnli", ctx.args.seeds[0]))
    except DataError as err:
        raise refused(err, "finetune_args", FINETUNE) from None
    # The best MJD (whichever run it is, known only after they all ran) is a training source over the 341 items:
    # an MJD run on other items or a subset would stop this stage hours later.
    from capo.data.registry import load_items

    wanted = {item.id for item in load_items("nli341")}
    for name, config in named_paths(ctx.args.mjd_runs, "mjd_runs").items():
        (parsed,) = MJD.parse(mjd_argv(ctx, name, config))
        covered = {item.id for item in load_items(parsed.dataset)[: parsed.limit]}
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


def _jury(ctx: Context, label: str, template: str | None, *,
          heldout_only: bool = False) -> tuple[dict, dict, dict, list]:
    """`eval/jury.py` for one predictor, then `eval/distributions.py` on its output against the same items' HJD:
    (the jury's report, its row of the table, the constants' rows on the same items, the two command lines)."""
    from capo.evaluate.distributions.compare import CONSTANTS

    args, out = ctx.args, ctx.dir("jury")
    output, human = out / f"{slug(label)}.jsonl", out / f"{slug(label)}_human.jsonl"
    argv = ["--model", args.model, *(["--explainers", template] if template else []), "--annotators",
            *args.annotators, "--dtype", args.dtype, "--batch_size", str(args.generate_batch_size),
            *(["--heldout_only", "true"] if heldout_only else []), "--output", str(output), "--human_output",
            str(human), "--report", str(out / f"{slug(label)}_report.json")]
    commands = [launch(args, JURY, argv)]
    report = read_json(out / f"{slug(label)}_report.json")
    rows, command = _compare(ctx, ["--human", str(human), "--model", str(output)], out / f"{slug(label)}_scores.json")
    commands.append(command)
    row = {**rows[output.stem], "in_training": report["output_in_training"],
           **({"left_out": report["left_out"]} if heldout_only else {}),
           "in_base_pretraining": report["output_in_base_pretraining"], "file": str(output.relative_to(ctx.root))}
    return report, row, {c: rows[c] for c in CONSTANTS}, commands


def run_jury_stage(ctx: Context) -> dict:
    """The explainer jury (`eval/jury.py`): per item of the 341, the annotators' label probabilities under their
    explainers averaged into one distribution, scored against ChaosNLI as the distributions stage scores the MJDs
    (`eval/distributions.py`); the base model alone, then SFT and CAPO per seed. Each explainer jury also has a
    held-out-only row, from `eval/jury.py --heldout_only true`: the items none of its explainers trained on (their
    run manifests). Beside them, the constants (`uniform`, `label_prior`: the mean ChaosNLI-dev HJD) on the 341 items
    and on each held-out row's items."""
    from capo.data.distributions import read_distributions
    from capo.evaluate.distributions.compare import constants_note

    out = ctx.dir("jury")
    predictors = explainer_predictors(ctx)
    table, notes, commands = {}, [], []
    progress = bar(len(predictors), "jury", "jury")
    for name, template in predictors.items():
        label, heldout = f"jury {name}", f"jury {name} held-out only"
        report, table[label], constants, ran = _jury(ctx, label, template)
        commands += ran
        if not template:  # the base model's items: every jury's (the 341 unless held out)
            table |= constants
            notes.append(constants_note(set(read_distributions(out / f"{slug(label)}_human.jsonl"))))
        else:
            trained, items = report["in_training"], report["items"]
            if 0 < trained < items:
                _, table[heldout], constants, ran = _jury(ctx, heldout, template, heldout_only=True)
                table |= {f"{c} ({heldout} items)": row for c, row in constants.items()}
                commands += ran
            else:
                notes.append(f"no `{heldout}` row: {trained} of the {items} items are in its explainers' training "
                             "data" + (" (the full row is held out)" if not trained else ""))
        progress.update(1)
    progress.close()
    write_json(out / "table.json", table)
    best = min((k for k in table if k.startswith("jury ") and k != "jury base" and not k.endswith("held-out only")),
               key=lambda k: table[k]["kl"], default=None)
    line = (f"{len(table)} rows; base KL {table['jury base']['kl']:.4f}"
            + (f", lowest-KL explainer jury: {best} (KL {table[best]['kl']:.4f}, {table[best]['in_training']} of "
               f"{table[best]['items']} items in its training data)" if best else ""))
    return {"line": line, "table": str((out / "table.json").relative_to(ctx.root)), "notes": notes,
            "commands": commands}
