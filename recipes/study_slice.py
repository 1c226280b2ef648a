"""One slice of the generation study (issue 26): train, generate, score label probabilities and judge, for one task
and seed, and write its compact results under docs/study/slices/ (see `capo.study.slice`).

    python recipes/study_slice.py --task nli --seed 0                     # core: SFT curve, CAPO, pseudo control
    python recipes/study_slice.py --task nli --seed 0 --part sft          # or the core in three commands, each
    python recipes/study_slice.py --task nli --seed 0 --part capo         #   projected within 150 min on a 2-core
    python recipes/study_slice.py --task nli --seed 0 --part pseudo       #   AVX2 CPU (capo after sft, same --work_dir)
    python recipes/study_slice.py --task nli --seed 0 --part controls     # the CAPO pair ablations (after core or sft)
    python recipes/study_slice.py --task nli --part prompting             # 4-, 16- and 50-shot prompting
    python eval/study_report.py --slices docs/study/slices --output docs/study/report.md

A killed slice started again with the same options resumes: finished adapters and generation runs are kept.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from capo.cli import parse_arguments, run_main
from capo.study.slice import SliceArguments, run_slice


def parse(argv: list[str] | None = None) -> tuple[SliceArguments]:
    return parse_arguments((SliceArguments,), argv, prog="recipes/study_slice.py", description=__doc__)


@run_main
def main(argv: list[str] | None = None) -> dict:
    (args,) = parse(argv)
    return run_slice(args)


if __name__ == "__main__":
    main()
