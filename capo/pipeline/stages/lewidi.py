"""LeWiDi 2025 stages: the explainers as annotators, the constants and the perspectivist encoder.
"""

from __future__ import annotations

from pathlib import Path

from capo.errors import DataError
from capo.io import read_json, write_json
from capo.pipeline import layout
from capo.pipeline.arguments import overrides
from capo.pipeline.cache import Context
from capo.pipeline.launch import LEWIDI, PERSPECTIVIST, launch
from capo.pipeline.progress import bar
from capo.pipeline.stages.common import explainer_predictors, refused, slug, use_cpu


def explainers_skipped(args, dataset: str) -> str | None:
    """Why the pipeline's SFT and CAPO explainers cannot predict LeWiDi `dataset` (None: they can). Adapters that
    trained on any item of the scored or the decision split are refused (`predict_lewidi`): the explainers must have
    trained on that data set's own train split (Par: the paraphrase explainers always do; VEN: with nli_dataset
    lewidi-ven), and every annotator of the data set needs one."""
    from capo.data.datasets import load_task_data
    from capo.data.formats.lewidi import (
        LEWIDI_TASK,
        capo_annotator,
        capo_item,
        lewidi_split_path,
        read_lewidi,
    )

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
    of dev (each row's `decision_fit` says which). The rows are read from each run's report (`--report_output`).
    Explainers that cannot be scored honestly on a data set (`explainers_skipped`) are left out, with the reason."""
    args, out = ctx.args, ctx.dir("lewidi_explainers")
    predictors = explainer_predictors(ctx)
    skipped = {d: reason for d in args.lewidi_datasets if (reason := explainers_skipped(args, d))}
    plan = [(dataset, split, name) for dataset in args.lewidi_datasets for split in _lewidi_splits(dataset)
            for name in predictors if name == "base" or dataset not in skipped]
    rows, commands = [], []
    progress = bar(len(plan), "lewidi explainers", "run")
    for dataset, split, name in plan:
        stem, template = out / f"{dataset}_{split}_{slug(name)}", predictors[name]
        argv = ["predict", "--dataset", dataset, "--split", split, "--decision_split", "dev", "--model", args.model,
                *(["--explainers", template] if template else []), "--dtype", args.dtype,
                "--batch_size", str(args.generate_batch_size), "--output", f"{stem}.jsonl",
                "--report_output", f"{stem}_report.json"]
        commands.append(launch(args, LEWIDI, argv))
        report = read_json(f"{stem}_report.json")
        rows.append({"dataset": dataset, "split": split, "predictor": name, **_scores(report["scores"]),
                     "soft_mean": report["soft_mean"], "decision": report["decision"],
                     "decision_fit": report["decision_fit"],
                     **({"fold_decisions": report["fold_decisions"]} if "fold_decisions" in report else {}),
                     "in_base_pretraining": report["in_base_pretraining"]})
        progress.update(1)
    progress.close()
    write_json(out / "scores.json", {"rows": rows, "skipped": skipped})
    line = "perspectivist score: " + _score_line(rows) + "".join(f"; {d.upper()} explainers skipped: {reason}"
                                                                for d, reason in skipped.items())
    return {"line": line, "rows": rows, "skipped": skipped, "commands": commands}


CONSTANTS = ("most_frequent", "random")  # the organisers' reference baselines (random: seed 0)


def _lewidi_splits(dataset: str) -> list[str]:
    """The labelled splits scored: VEN dev and test; Par dev (its test split is held back)."""
    return ["dev", "test"] if dataset == "ven" else ["dev"]


def perspectivist_argv(ctx: Context, dataset: str, seed: int) -> list[str]:
    return ["--config", ctx.args.perspectivist_config, *overrides(ctx.args.perspectivist_args, "perspectivist_args"),
            "--dataset", dataset, "--predict_splits", ",".join(_lewidi_splits(dataset)), "--seed", str(seed),
            "--use_cpu", use_cpu(), "--output_dir", str(ctx.dir("lewidi") / "perspectivist" / f"{dataset}_s{seed}")]


def plan_lewidi(ctx: Context) -> None:
    if ctx.args.perspectivist:
        for dataset in ctx.args.lewidi_datasets:
            try:
                PERSPECTIVIST.parse(perspectivist_argv(ctx, dataset, ctx.args.seeds[0]))
            except DataError as err:
                raise refused(err, "perspectivist_args", PERSPECTIVIST) from None


def run_lewidi(ctx: Context) -> dict:
    """LeWiDi 2025 scores (`eval/lewidi.py predict`, then `score`): the most-frequent and random constants, and the
    perspectivist encoder per seed when configured (`recipes/perspectivist.py`: its VEN threshold / Par rule
    cross-fitted over item folds of dev for the dev rows, fitted on all of dev for test). The rows are read from
    the scores each job writes."""
    args, out = ctx.args, ctx.dir("lewidi")
    rows, commands = [], []
    for dataset in args.lewidi_datasets:
        for split in _lewidi_splits(dataset):
            for name in CONSTANTS:
                where, stem = ["--dataset", dataset, "--split", split], out / f"{dataset}_{split}_{name}"
                commands.append(launch(args, LEWIDI, ["predict", *where, "--baseline", name,
                                                      "--output", f"{stem}.jsonl"]))
                commands.append(launch(args, LEWIDI, ["score", *where, "--predictions", f"{stem}.jsonl",
                                                      "--output", f"{stem}_scores.json"]))
                rows.append({"dataset": dataset, "split": split, "predictor": name,
                             **_scores(read_json(f"{stem}_scores.json"))})
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
    return {"line": "perspectivist score: " + _score_line(rows), "rows": rows, "commands": commands}


def _scores(report: dict) -> dict:
    """A table row's scores from a score report (`eval/lewidi.py score`, a predict report's `scores`)."""
    return {"perspectivist": report["perspectivist"], "soft": report["soft"], "items": report["n_items"]}


def _score_line(rows: list[dict]) -> str:
    return ", ".join(f"{r['dataset']} {r['split']} {r['predictor']} {r['perspectivist']:.3f}" for r in rows)
