"""Stage generation: explanations of held-out items from every explainer and prompting baseline
(`recipes/generate.py`).
"""

from __future__ import annotations

from capo.errors import DataError
from capo.io import iter_jsonl
from capo.pipeline import layout
from capo.pipeline.cache import Context
from capo.pipeline.launch import GENERATE, launch
from capo.pipeline.progress import bar
from capo.pipeline.stages.common import file_sha256, refused


def plan_generation(ctx: Context) -> None:
    from capo.io import check_model_path

    check_model_path(ctx.args.model)
    for task in ctx.args.tasks:
        for argv in layout.generation_runs(ctx.args, ctx.root, task).values():
            try:
                GENERATE.parse(argv)
            except DataError as err:
                raise refused(err, None, GENERATE) from None


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
                         "file": str(path.relative_to(ctx.root)), "sha256": file_sha256(path)})
            progress.update(1)
    progress.close()
    line = ", ".join(f"{r['task']} {r['run']}: {r['records']} records ({r['unparsed']} unparsed)" for r in runs)
    return {"line": line, "runs": runs, "commands": commands}
