"""`run_pipeline`: the study's stages (`capo.pipeline.stages`) through the signature cache (`capo.pipeline.cache`)."""

from __future__ import annotations

from collections.abc import Callable

from capo.io import check_output
from capo.pipeline.arguments import PipelineArguments
from capo.pipeline.cache import run_stages, stage_states
from capo.pipeline.stages import STAGES


def run_pipeline(args: PipelineArguments, log: Callable[[str], None] = print) -> list[dict]:
    """Run every enabled stage that is not cached; returns one row per stage (status ran / resumed / cached)."""
    check_output(args.output_dir, folder=True)
    rows = run_stages(STAGES, args, args.output_dir, from_stage=args.from_stage, skip=args.skip, log=log)
    ran = [r["stage"] for r in rows if r["status"] != "cached"]
    log(f"[pipeline] {len(rows)} stages, {len(ran)} run ({', '.join(ran) or 'none'}), "
        f"{len(rows) - len(ran)} cached; report: {args.output_dir}/report/report.md")
    return rows


def pipeline_status(args: PipelineArguments, log: Callable[[str], None] = print) -> list[dict]:
    """Print where the run in `args.output_dir` stands (each stage's state, wall time so far, attempts); runs
    nothing."""
    rows = stage_states(STAGES, args, args.output_dir, from_stage=args.from_stage, skip=args.skip)
    width = max((len(r["stage"]) for r in rows), default=0)
    for r in rows:
        log(f"{r['stage']:<{width}}  {r['state']:<40} {r['wall_seconds']:>10.1f} s  {r['attempts']} attempt(s)")
    total = sum(r["wall_seconds"] for r in rows)
    done = sum(r["state"] == "finished" for r in rows)
    log(f"{done} of {len(rows)} stages finished; {total:.0f} s ({total / 3600:.2f} h) of wall time recorded so far")
    return rows
