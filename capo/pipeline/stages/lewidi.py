"""LeWiDi 2025 stages: the explainers as annotators, the constants and the perspectivist encoder.
"""

from __future__ import annotations

from pathlib import Path

from capo.errors import DataError
from capo.io import read_json, write_json
from capo.pipeline import layout
from capo.pipeline.arguments import overrides
from capo.pipeline.cache import Context
from capo.pipeline.launch import PERSPECTIVIST, launch
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
    of dev (each row's `decision_fit` says which).
    Explainers that cannot be scored honestly on a data set (`explainers_skipped`) are left out, with the reason."""
    from capo.lewidi.explainers import predict_lewidi

    args, out = ctx.args, ctx.dir("lewidi_explainers")
    predictors = explainer_predictors(ctx)
    skipped = {d: reason for d in args.lewidi_datasets if (reason := explainers_skipped(args, d))}
    plan = [(dataset, split, name) for dataset in args.lewidi_datasets for split in _lewidi_splits(dataset)
            for name in predictors if name == "base" or dataset not in skipped]
    rows, commands = [], []
    progress = bar(len(plan), "lewidi explainers", "run")
    for dataset, split, name in plan:
        output = out / f"{dataset}_{split}_{slug(name)}.jsonl"
        template = predictors[name]
        report = predict_lewidi(dataset, split, str(output), model=args.model, explainers=template,
                                decision="dev", decision_split="dev", dtype=args.dtype,
                                batch_size=args.generate_batch_size, log=progress.write)
        write_json(out / f"{dataset}_{split}_{slug(name)}_report.json", report)
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
    """LeWiDi 2025 scores (`eval/lewidi.py predict/score`): the most-frequent and random constants, and the
    perspectivist encoder per seed when configured (`recipes/perspectivist.py`: its VEN threshold / Par rule
    cross-fitted over item folds of dev for the dev rows, fitted on all of dev for test)."""
    from capo.data.formats.lewidi import lewidi_split_path, read_lewidi
    from capo.lewidi.baselines import most_frequent_predictions, random_predictions
    from capo.lewidi.predictions import write_annotator_predictions
    from capo.lewidi.score import score

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
