"""Where each stage puts what in the run folder, and the jobs a configuration implies (which adapters, which
generation runs); the stages and the report read the same paths from here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from capo.data.schema import CONDITIONED

KINDS = ("sft", "capo")


@dataclass(frozen=True)
class Unit:
    """One explainer: an adapter per (task, seed, annotator); annotator `all` is the conditioned adapter."""

    task: str
    seed: int
    annotator: str

    @property
    def name(self) -> str:
        return f"{self.task} {self.annotator} seed {self.seed}"


def units(args) -> list[Unit]:
    extra = (CONDITIONED,) if args.conditioned else ()
    return [Unit(task, seed, a) for task in args.tasks for seed in args.seeds for a in (*args.annotators, *extra)]


def adapter_template(root: Path, kind: str) -> str:
    """`eval/attribution.py`'s template for one kind's adapters ({seed}, {task}, {annotator} filled in there)."""
    return str(root / kind / "seed{seed}" / "{task}" / "{annotator}")


def adapter_dir(root: Path, kind: str, unit: Unit) -> Path:
    return Path(adapter_template(root, kind).format(seed=unit.seed, task=unit.task, annotator=unit.annotator))


def explainer_template(root: Path, kind: str, seed: int) -> str:
    """`eval/jury.py` / `eval/lewidi.py predict --explainers` template of one kind and seed ({task}, {annotator})."""
    return str(root / kind / f"seed{seed}" / "{task}" / "{annotator}")


def task_dataset(args, task: str) -> str:
    """The data set a task's explainers train on, and every stage reads for it: `nli_dataset` for nli (VariErr or
    LeWiDi VEN), LeWiDi Par for paraphrase."""
    from capo.data.datasets import DEFAULT_DATASET

    return args.nli_dataset if task == "nli" else DEFAULT_DATASET[task]


def heldout_split(task: str, split_seed: int, dataset: str | None = None) -> str:
    """The held-out split that generation and the judges share: test, or dev where test is not shipped
    (Paraphrase), as `capo.evaluate.behaviour.judges.histories_and_heldout` picks it."""
    from capo.data.datasets import load_task_data

    return "test" if load_task_data(task, dataset, split_seed).items("test") else "dev"


def generation_runs(args, root: Path, task: str) -> dict[str, list[str]]:
    """Run name -> the run's own `recipes/generate.py` options (explainers per kind and seed, the conditioned
    adapter, the base model, prompting baselines), each into its own folder."""
    dataset = task_dataset(args, task)
    common = ["--model", args.model, "--dataset", dataset, "--split",
              heldout_split(task, args.split_seed, dataset), "--split_seed", str(args.split_seed), "--dtype", args.dtype,
              "--batch_size", str(args.generate_batch_size), "--max_new_tokens", str(args.generate_max_new_tokens),
              "--shard_size", str(args.generate_shard_size),
              *(["--limit", str(args.generate_limit)] if args.generate_limit else [])]
    runs: dict[str, list[str]] = {}
    for kind in args.generate_kinds:
        for seed in args.seeds:
            runs[f"{kind}_s{seed}"] = ["--adapters", *(f"{a}={adapter_dir(root, kind, Unit(task, seed, a))}"
                                                       for a in args.annotators)]
    if args.conditioned:
        for seed in args.seeds:
            runs[f"cond_s{seed}"] = ["--adapters", f"cond={adapter_dir(root, 'capo', Unit(task, seed, CONDITIONED))}",
                                     "--targets", *args.annotators, "--conditioned", "true"]
    if args.generate_base:
        runs["base"] = ["--base", "true"]
    for shots in args.prompting_shots:
        runs["zs" if shots == 0 else f"fs{shots}"] = [
            "--targets", *args.annotators, "--few_shot", str(shots),
            *(["--response_prefix", args.prompting_response_prefix] if args.prompting_response_prefix else []),
            *(["--stop", *args.prompting_stop] if args.prompting_stop else [])]
    return {name: [*common, *options, "--output_dir", str(generation_dir(root, task, name))]
            for name, options in runs.items()}


def generation_dir(root: Path, task: str, run: str) -> Path:
    return root / "generation" / task / run
