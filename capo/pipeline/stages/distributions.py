"""Distribution stages: MJDs (`recipes/mjd.py`) and their calibration, MJD and jury distributions against
ChaosNLI, soft-label fine-tuning (`recipes/finetune.py`), the explainer jury.
"""

from __future__ import annotations

from pathlib import Path

from capo.errors import DataError
from capo.io import atomic_write_text, iter_jsonl, read_json, write_json
from capo.pipeline.arguments import named_paths, overrides
from capo.pipeline.cache import Context
from capo.pipeline.launch import FINETUNE, MJD, launch
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

    from capo.data.distributions import read_distributions, write_distributions
    from capo.evaluate.distributions.calibration import crossfit, label_scores, mjd_at, top_letter_shares
    from capo.evaluate.distributions.metrics import distribution_report

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


def run_distributions(ctx: Context) -> dict:
    """The 341-item baselines and every MJD (raw and calibrated) against ChaosNLI (`eval/distributions.py`)."""
    from capo.data.distributions import read_distributions
    from capo.evaluate.distributions.compare import (
        baseline_distributions,
        baseline_report,
        format_table,
        join,
    )
    from capo.evaluate.distributions.metrics import distribution_report

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


def run_jury_stage(ctx: Context) -> dict:
    """The explainer jury (`eval/jury.py`): per item of the 341, the annotators' label probabilities under their
    explainers averaged into one distribution, scored against ChaosNLI as the distributions stage scores the MJDs
    (`eval/distributions.py`); the base model alone, then SFT and CAPO per seed. Each explainer jury also has a
    held-out-only row: its distributions on the items none of its explainers trained on (their run manifests, as
    `run_jury` counts them), which is what `eval/jury.py --heldout_only true` writes (the same per-item scores, to
    float rounding, from one scoring pass instead of two)."""
    from capo.data.distributions import read_distributions, write_distributions
    from capo.data.registry import load_items
    from capo.evaluate.distributions.compare import join
    from capo.evaluate.distributions.jury import run_jury
    from capo.evaluate.distributions.metrics import distribution_report
    from capo.generate.labels import resolve_explainers, training_overlap
    from capo.models.corpus_lm import pretraining_item_ids

    args, out = ctx.args, ctx.dir("jury")
    predictors = explainer_predictors(ctx)
    items = load_items("nli341")
    pretrained = pretraining_item_ids(args.model)  # a corpus LM's pre-training items (none for any other model)
    table, notes, commands = {}, [], []

    def files(label: str) -> tuple[Path, Path]:
        return out / f"{slug(label)}.jsonl", out / f"{slug(label)}_human.jsonl"

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
