"""The whole study from one config: data -> SFT and CAPO explainers -> generation -> attribution -> judges and
imitation -> variability -> MJDs (calibrated) -> distributions vs ChaosNLI -> explainer jury -> LeWiDi (constants and
explainers as annotators) -> a report folder.

    python recipes/pipeline.py --config recipes/configs/pipeline_tiny.yaml            # the demo (make demo)
    python recipes/pipeline.py --config recipes/configs/pipeline_study.yaml           # make study
    python recipes/pipeline.py --config recipes/configs/pipeline_gpu.yaml             # GPUs: accelerate launch per job
    python recipes/pipeline.py --config ... --from generation                         # re-run generation and after
    python recipes/pipeline.py --config ... --generate_limit 8                        # any key, on the command line
    python recipes/pipeline.py --config ... --status                                  # where a run stands; runs nothing
    python recipes/pipeline.py --config recipes/configs/pipeline_gpu.yaml --dry_run true  # every job's options and
                                                                                      # memory plan; runs nothing

Every stage works in <output_dir>/<stage>/ and ends with stage.json (its signature: config keys, input files,
upstream stages). Running again skips every stage whose signature is unchanged; a changed key re-runs the stages it
shapes and those downstream; a killed run resumes (trainers from their checkpoints, generation and MJDs from their
shards). The report: <output_dir>/report/report.md (capo.pipeline.report).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads slow shared CPUs 10-25x

from capo.cli import run_main
from capo.pipeline.arguments import parse
from capo.pipeline.dry_run import dry_run
from capo.pipeline.run import pipeline_status, run_pipeline


@run_main
def main(argv: list[str] | None = None) -> list[dict]:
    args = parse(argv)
    return pipeline_status(args) if args.status else dry_run(args) if args.dry_run else run_pipeline(args)


if __name__ == "__main__":
    main()
