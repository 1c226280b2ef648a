"""Fine-tune one encoder per (source, seed) and write the comparison table, constant predictors included.

    python eval/finetune_compare.py --sources chaosnli,varierr_dist,mnli_dist,mnli_onehot --seeds 2
    python eval/finetune_compare.py --sources chaosnli,runs/mjd/llama.jsonl --seeds 3 \\
        --config recipes/configs/finetune_paper.yaml --output_dir runs/ft_paper

Each run is `recipes/finetune.py` in its own process (its folder holds metrics, curves and a run manifest). A finished
run is reused only when its `run_signature.json` matches the run this invocation would start (same settings, same
data content); a folder holding a different run is refused in one line. So a killed comparison continues where it
stopped, and a changed setting never mixes old and new runs in one table. Arguments this script does not know are passed
to every run (e.g. `--max_steps 10`). Writes `comparison.md`, `comparison.csv` and `runs.json` into --output_dir.
Constants on the same items: uniform, each source's training mean, and always the ChaosNLI training mean.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

from capo.cli import ArgumentParser, run_main
from capo.errors import DataError
from capo.evaluate.finetune.arguments import SOURCES, parse_arguments
from capo.evaluate.finetune.comparison import aggregate, format_csv, format_markdown, reference_constants
from capo.evaluate.finetune.data import load_finetune_data, source_name
from capo.evaluate.finetune.trainer import METRICS_FILE, check_run_folder, run_signature
from capo.io import atomic_write_text, check_input_file, check_output, read_json, write_json
from capo.manifest import write_manifest

ROOT = Path(__file__).resolve().parents[1]


def run_arguments(source: str, seed: int, run_dir: Path, config: str, extra: list[str]) -> list[str]:
    return ["--config", config, "--source", source, "--seed", str(seed), "--output_dir", str(run_dir), *extra]


def check_run(argv: list[str]) -> None:
    """Refuse (one line) a run folder that holds a run with other settings or data than `argv` would train."""
    script, training = parse_arguments(argv)
    check_run_folder(training.output_dir, run_signature(script, training, load_finetune_data(script)), record=False)


def run_one(argv: list[str], run_dir: Path, label: str) -> dict:
    """One fine-tuning run in a subprocess; its metrics.json (written last) marks it finished. Call `check_run`
    first: a finished run is reused only when its signature matches."""
    metrics_path = run_dir / METRICS_FILE
    if metrics_path.exists():
        return read_json(metrics_path)
    run_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(ROOT / "recipes" / "finetune.py"), *argv]
    log_path = run_dir / "log.txt"
    with open(log_path, "a", encoding="utf-8") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False,
                              env={**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")})
    if done.returncode != 0 or not metrics_path.exists():
        lines = [line for line in log_path.read_text(encoding="utf-8").splitlines() if line.strip()]
        last = next((line for line in reversed(lines) if line.startswith("error:")), lines[-1] if lines else "")
        raise DataError(f"run {label} failed (exit {done.returncode}): {last} "
                        f"(log: {log_path})")
    return read_json(metrics_path)


@run_main
def main(argv: list[str] | None = None) -> dict:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--sources", default=",".join(SOURCES),
                        help=f"comma-separated: {', '.join(SOURCES)} or distribution JSONL paths")
    parser.add_argument("--seeds", type=int, default=2, help="runs per source, seeds first_seed..first_seed+N-1")
    parser.add_argument("--first_seed", type=int, default=0)
    parser.add_argument("--config", default=str(ROOT / "recipes" / "configs" / "finetune_cpu.yaml"))
    parser.add_argument("--output_dir", default="runs/finetune_compare")
    args, extra = parser.parse_known_args(argv)

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
    parse_arguments(["--config", args.config, *extra, "--source", sources[0],
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
                         run_arguments(source, seed, run_dir, args.config, extra)))
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
    write_manifest(output_dir, config={"args": vars(args), "passed_to_runs": extra},
                   extra={"wall_seconds_this_invocation": round(wall, 1), "runs": len(runs)})
    print(markdown)
    print(f"{len(runs)} runs, {wall / 60:.1f} min this invocation; table: {output_dir / 'comparison.md'}")
    return table


if __name__ == "__main__":
    main()
