"""The comparison table over runs: mean ± sd over seeds per source, the constant predictors, and the verdict; and
`run_comparison`, what `eval/finetune_compare.py` runs: one `recipes/finetune.py` run per (source, seed), then the
table."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from capo.errors import DataError
from capo.evaluate.finetune.arguments import SOURCES
from capo.evaluate.finetune.data import chaosnli_examples, source_name, training_examples
from capo.evaluate.finetune.scoring import HIGHER_IS_BETTER, METRICS, constant_scores

Table = dict[str, dict[str, dict[str, tuple[float, float, int]]]]
REPO = Path(__file__).resolve().parents[3]  # recipes/ lives here


def reference_constants() -> dict[str, dict[str, float]]:
    """split -> scores of always predicting the mean ChaosNLI HJD of the 341 training items: the constant every
    table includes, so a source is never judged only against its own (possibly far worse) training mean."""
    train = training_examples("chaosnli")
    return {split: constant_scores(train, chaosnli_examples(split))["train_mean"] for split in ("dev", "test")}


def aggregate(runs: Sequence[Mapping], reference: Mapping | None = None) -> Table:
    """row name -> split -> metric -> (mean, sd, n) over seeds. Rows: each trained source, then the constants
    (uniform once; the training mean once per source, since each source has its own mean; and `reference`, the
    ChaosNLI training mean from `reference_constants()`, as `train_mean[chaosnli]` when no run already gave it)."""
    rows: dict[str, dict[str, dict[str, list[float]]]] = {}

    def add(name: str, split: str, values: Mapping[str, float]) -> None:
        bucket = rows.setdefault(name, {}).setdefault(split, {})
        for metric in METRICS:
            bucket.setdefault(metric, []).append(float(values[metric]))

    for run in runs:
        for split in ("dev", "test"):
            add(run["source"], split, run[split])
    seen_constants = set()
    for run in runs:
        if run["source"] in seen_constants:
            continue  # constants do not depend on the seed
        seen_constants.add(run["source"])
        for split in ("dev", "test"):
            if "uniform" not in rows or split not in rows["uniform"]:
                add("uniform", split, run["constants"][split]["uniform"])
            add(f"train_mean[{run['source']}]", split, run["constants"][split]["train_mean"])
    if reference is not None and "train_mean[chaosnli]" not in rows:
        for split in ("dev", "test"):
            add("train_mean[chaosnli]", split, reference[split])
    return {
        name: {
            split: {m: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else math.nan, len(v))
                    for m, v in metrics.items()}
            for split, metrics in splits.items()
        }
        for name, splits in rows.items()
    }


def is_constant_row(name: str) -> bool:
    return name == "uniform" or name.startswith("train_mean[")


def beats_constants(table: Mapping, split: str = "test", metric: str = "kl") -> dict[str, bool]:
    """For each trained source: does its mean beat the best constant predictor on `metric`?"""
    sign = -1 if metric in HIGHER_IS_BETTER else 1
    best = min(sign * row[split][metric][0] for name, row in table.items() if is_constant_row(name))
    return {name: sign * row[split][metric][0] < best for name, row in table.items() if not is_constant_row(name)}


def verdict(table: Mapping, split: str = "test") -> str:
    """One sentence per headline metric naming the best constant predictor and which trained sources (if any) beat
    it, with the margin next to the spread over seeds (a margin inside the sd is no evidence of learning)."""
    lines = []
    for metric in ("kl", "macro_f1"):
        sign = -1 if metric in HIGHER_IS_BETTER else 1
        best_name = min((n for n in table if is_constant_row(n)), key=lambda n: sign * table[n][split][metric][0])
        best = table[best_name][split][metric][0]
        head = f"On {split} {metric}, the best constant predictor is {best_name} ({best:.4f})"
        winners = [name for name, ok in beats_constants(table, split, metric).items() if ok]
        if not winners:
            lines.append(f"{head}; NO trained source beats it.")
            continue
        parts = []
        for name in winners:
            mean, sd, _ = table[name][split][metric]
            spread = "" if math.isnan(sd) else f", sd over seeds {sd:.4f}"
            parts.append(f"{name} (by {abs(mean - best):.4f}{spread})")
        lines.append(f"{head}; beating it: {', '.join(parts)}.")
    return " ".join(lines)


def _cell(value: tuple[float, float, int]) -> str:
    mean, sd, _ = value
    return f"{mean:.4f}" if math.isnan(sd) else f"{mean:.4f} ± {sd:.4f}"


def format_markdown(table: Mapping) -> str:
    """Two Markdown tables (dev, test): mean ± sd over seeds per metric, constants marked, then the verdict."""
    parts = []
    for split in ("dev", "test"):
        lines = [f"**ChaosNLI {split}** (mean ± sd over seeds; n = runs)", "",
                 "| source | n | " + " | ".join(METRICS) + " |", "| --- | ---: |" + " ---: |" * len(METRICS)]
        for name, row in table.items():
            label = f"{name} (constant)" if is_constant_row(name) else name
            n = row[split][METRICS[0]][2]
            lines.append(f"| {label} | {n} | " + " | ".join(_cell(row[split][m]) for m in METRICS) + " |")
        parts.append("\n".join(lines))
    parts.append(verdict(table, "dev") + "\n\n" + verdict(table, "test"))
    return "\n\n".join(parts) + "\n"


def format_csv(table: Mapping) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["source", "constant", "split", "n", *[f"{m}_{s}" for m in METRICS for s in ("mean", "sd")]])
    for name, row in table.items():
        for split, metrics in row.items():
            values = [f"{metrics[m][k]:.6f}" for m in METRICS for k in (0, 1)]
            writer.writerow([name, is_constant_row(name), split, metrics[METRICS[0]][2], *values])
    return buffer.getvalue()


# --- eval/finetune_compare.py ------------------------------------------------------------------------------------


@dataclass
class CompareArguments:
    """Arguments of `eval/finetune_compare.py`; every argument it does not know is passed to each run."""

    sources: str = field(default=",".join(SOURCES), metadata={
        "help": f"comma-separated: {', '.join(SOURCES)} or distribution JSONL paths"})
    seeds: int = field(default=2, metadata={"help": "runs per source, seeds first_seed..first_seed+N-1"})
    first_seed: int = 0
    run_config: str = field(default=str(REPO / "recipes" / "configs" / "finetune_cpu.yaml"), metadata={
        "aliases": ["--config"], "help": "recipes/finetune.py's YAML config, for every run"})
    output_dir: str = "runs/finetune_compare"


def parse_compare_arguments(argv: Sequence[str] | None, *, prog: str | None = None,
                            description: str | None = None) -> tuple[CompareArguments, list[str]]:
    """(this script's arguments, the ones it passes to every run). `--config` names the runs' YAML config
    (`recipes/finetune.py`'s), as it always has, so it cannot also hold this script's own arguments as it does for
    the other scripts: it is read as `--run_config`, and what the shared parser does not know goes to the runs."""
    import sys

    from capo.cli import ArgumentParser

    words = []
    for word in sys.argv[1:] if argv is None else argv:
        flag, sep, value = word.partition("=")
        words += ["--run_config", *([value] if sep else [])] if flag == "--config" else [word]
    parser = ArgumentParser((CompareArguments,), prog=prog, description=description)
    args, extra = parser.parse_args_and_config(words, return_remaining_strings=True)
    return args, list(extra)


def run_arguments(source: str, seed: int, run_dir: Path, config: str, extra: Sequence[str]) -> list[str]:
    return ["--config", config, "--source", source, "--seed", str(seed), "--output_dir", str(run_dir), *extra]


def check_run(argv: list[str]) -> None:
    """Refuse (one line) a run folder that holds a run with other settings or data than `argv` would train."""
    from capo.evaluate.finetune.arguments import parse_arguments
    from capo.evaluate.finetune.data import load_finetune_data
    from capo.evaluate.finetune.trainer import check_run_folder, run_signature

    script, training = parse_arguments(argv)
    check_run_folder(training.output_dir, run_signature(script, training, load_finetune_data(script)), record=False)


def run_one(argv: list[str], run_dir: Path, label: str) -> dict:
    """One fine-tuning run in a subprocess; its metrics.json (written last) marks it finished. Call `check_run`
    first: a finished run is reused only when its signature matches."""
    import os
    import subprocess
    import sys

    from capo.evaluate.finetune.trainer import METRICS_FILE
    from capo.io import read_json

    metrics_path = run_dir / METRICS_FILE
    if metrics_path.exists():
        return read_json(metrics_path)
    run_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(REPO / "recipes" / "finetune.py"), *argv]
    log_path = run_dir / "log.txt"
    with open(log_path, "a", encoding="utf-8") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False,
                              env={**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")})
    if done.returncode != 0 or not metrics_path.exists():
        lines = [line for line in log_path.read_text(encoding="utf-8").splitlines() if line.strip()]
        last = next((line for line in reversed(lines) if line.startswith("error:")), lines[-1] if lines else "")
        raise DataError(f"run {label} failed (exit {done.returncode}): {last} (log: {log_path})")
    return read_json(metrics_path)


def run_comparison(args: CompareArguments, passed_to_runs: Sequence[str] = (),
                   log: Callable[[str], None] = print) -> Table:
    """Fine-tune one encoder per (source, seed), each `recipes/finetune.py` in its own process (`passed_to_runs` go
    to every run), and write the comparison table, constants included: `comparison.md`, `comparison.csv`,
    `runs.json` and a run manifest in `args.output_dir`. Every run folder is checked before the first run starts;
    a finished run is reused only when its `run_signature.json` matches (so a killed comparison continues where it
    stopped, and a changed setting never mixes old and new runs in one table)."""
    import time

    from tqdm import tqdm

    from capo.evaluate.finetune.arguments import parse_arguments
    from capo.io import atomic_write_text, check_input_file, check_output, write_json
    from capo.manifest import write_manifest

    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    if not sources:
        raise DataError("no sources given", field="--sources")
    for source in sources:
        if source not in SOURCES and not Path(source).exists():
            raise DataError(f"not a file and not a known source (known: {', '.join(SOURCES)})", path=source)
        if source not in SOURCES:
            check_input_file(source)
    if args.seeds < 1:
        raise DataError("need at least one seed", field="--seeds")
    check_output(args.output_dir, folder=True)
    # The config and the pass-through arguments as recipes/finetune.py reads them: a mistake fails here, once, not
    # in every run after its folder was made.
    parse_arguments(["--config", args.run_config, *passed_to_runs, "--source", sources[0],
                     "--output_dir", str(Path(args.output_dir) / "check")])
    names = [source_name(s) for s in sources]
    if len(set(names)) != len(names):
        raise DataError(f"two sources share the name {next(n for n in names if names.count(n) > 1)!r}; rename a file",
                        field="--sources")

    output_dir = Path(args.output_dir)
    jobs = []
    for source in sources:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            run_dir = output_dir / source_name(source) / f"seed{seed}"
            jobs.append((f"{source_name(source)} seed {seed}", run_dir,
                         run_arguments(source, seed, run_dir, args.run_config, passed_to_runs)))
    for _, _, argv_run in jobs:  # every folder checked before the first (long) run starts
        check_run(argv_run)
    runs, started = [], time.monotonic()
    for label, run_dir, argv_run in (bar := tqdm(jobs, desc="fine-tuning runs", unit="run")):
        bar.set_postfix_str(label)
        runs.append(run_one(argv_run, run_dir, label))
    wall = time.monotonic() - started

    table = aggregate(runs, reference=reference_constants())
    markdown = format_markdown(table)
    atomic_write_text(output_dir / "comparison.md", markdown)
    atomic_write_text(output_dir / "comparison.csv", format_csv(table))
    write_json(output_dir / "runs.json", runs)
    write_manifest(output_dir, config={"args": args, "passed_to_runs": list(passed_to_runs)},
                   extra={"wall_seconds_this_invocation": round(wall, 1), "runs": len(runs)})
    log(markdown)
    log(f"{len(runs)} runs, {wall / 60:.1f} min this invocation; table: {output_dir / 'comparison.md'}")
    return table
