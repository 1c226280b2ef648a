"""Stages data, sft and capo: the data record, then per-annotator SFT and CAPO explainers (`recipes/sft.py`,
`recipes/capo.py`, launched as their entry points).

The data stage's files (the SFT histories `data_prep/build_sft.py` writes, the split ids) are a record for the
reader, not training input: each trainer rebuilds its rows and pairs from the data set (whose content hash its run
manifest records) and its own options (validity predicates, `rejected_from`, `max_pairs_per_item`, `pair_seed`), so
the pairs are defined in one place, the recipe, and a second copy cannot drift from it. The data -> sft edge is an
ordering and signature dependency.
"""

from __future__ import annotations

from collections.abc import Callable

from capo.errors import DataError
from capo.io import read_json, write_json, write_jsonl
from capo.pipeline import layout
from capo.pipeline.arguments import overrides
from capo.pipeline.cache import Context
from capo.pipeline.launch import CAPO, SFT, Job, command_line, launch
from capo.pipeline.progress import bar
from capo.pipeline.stages.common import refused, use_cpu


def data_files(args) -> list[str]:
    """The shipped data every stage reads (VariErr, the 341 items, ChaosNLI, LeWiDi): their content is the data
    stage's signature, so an edited file re-runs everything that reads it."""
    from capo.data.formats.common import CHAOS_DIR, LEWIDI_DIR, NLI341_PATH, VARIERR_PATH

    files = [VARIERR_PATH, NLI341_PATH, *sorted(CHAOS_DIR.glob("*.json")), *sorted(LEWIDI_DIR.rglob("*.json"))]
    return [str(f) for f in files if f.is_file()]


def run_data(ctx: Context) -> dict:
    """Splits and per-annotator training histories (the SFT rows `data_prep/build_sft.py` writes), per task."""
    from capo.data.datasets import load_task_data
    from capo.evaluate.behaviour.patterns import responses
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


def explainer_argv(ctx: Context, kind: str, unit: layout.Unit) -> list[str]:
    """recipes/sft.py or recipes/capo.py options of one adapter: its recipe config, the overrides, then what the
    pipeline sets (model, task, annotator, seed, output folder; resume from a checkpoint after a kill)."""
    args = ctx.args
    config, extra = (args.sft_config, args.sft_args) if kind == "sft" else (args.capo_config, args.capo_args)
    argv = ["--config", config, *overrides(extra, f"{kind}_args"), "--model_name_or_path", args.model,
            "--task", unit.task, "--dataset", layout.task_dataset(args, unit.task), "--annotator", unit.annotator,
            "--seed", str(unit.seed), "--split_seed", str(args.split_seed), "--use_cpu", use_cpu(), "--resume_from_checkpoint", "true",
            "--output_dir", str(layout.adapter_dir(ctx.root, kind, unit))]
    if kind == "capo":
        argv += ["--init_from", "sft", "--sft_adapter", str(layout.adapter_dir(ctx.root, "sft", unit))]
    return argv


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
                raise refused(err, f"{kind}_args", job) from None

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
