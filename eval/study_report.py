"""The study report from the committed study slices (issue 26).

    python eval/study_report.py --slices docs/study/slices --output docs/study/report.md --figures docs/study

Reads every slice folder (`capo.study.report.read_slices`), writes the markdown report (judge attribution with
item-clustered bootstrap intervals, paired CAPO − SFT differences, the learning curve, the pseudo-annotator controls,
label behaviour from label probabilities, caricature diagnostics) and its figures; the same slices give the same
bytes.
"""

from __future__ import annotations

from capo.cli import parse_arguments, run_main
from capo.study.report import StudyReportArguments, run_study_report


def parse(argv: list[str] | None = None) -> tuple[StudyReportArguments]:
    return parse_arguments((StudyReportArguments,), argv, prog="eval/study_report.py", description=__doc__)


@run_main
def main(argv: list[str] | None = None) -> dict:
    (args,) = parse(argv)
    return run_study_report(args)


if __name__ == "__main__":
    main()
