"""Caches that know the code (`capo.code_identity`): a stage's signature holds the files of the code it runs, so an
edit to an evaluation function makes exactly the stages that run it (and what reads their outputs) stale, `--status`
says why; a sharded run refuses to resume with other code; manifests record the job's own command."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from capo import code_identity
from capo.code_identity import callable_files, module_files
from capo.errors import DataError
from capo.io import write_json
from capo.pipeline import cache
from capo.pipeline.arguments import parse
from capo.pipeline.stages import STAGES


def _edit(monkeypatch, edited: str) -> None:
    """As if `edited` (a repository path) had been changed on disk: its digest differs from then on."""
    real = code_identity.file_digest
    monkeypatch.setattr(code_identity, "file_digest",
                        lambda path: "edited" if str(path).endswith(edited) else real(path))


def test_module_files_follow_imports_transitively_and_only_within_capo():
    files = module_files(["capo.evaluate.distributions.compare"])
    # distributions imports metrics; metrics' own imports and the packages' __init__ files come along
    assert {"capo/evaluate/distributions/compare.py", "capo/evaluate/distributions/metrics.py", "capo/__init__.py",
            "capo/evaluate/__init__.py", "capo/errors.py"} <= files.keys()
    assert not any(name.startswith(("capo/train/", "capo/pipeline/")) for name in files)
    assert all(len(digest) == 16 for digest in files.values())


def test_a_stage_counts_its_own_functions_not_its_whole_module():
    by_name = {stage.name: callable_files(stage.run) for stage in STAGES}
    pieces = [key for key in by_name["distributions"] if ":" in key]
    assert pieces and all(key.startswith("capo.pipeline.") for key in pieces)
    assert "capo/pipeline/stages.py" not in by_name["distributions"]  # only the functions it runs
    assert "recipes/sft.py" in by_name["sft"] and "capo/train/explainers.py" in by_name["sft"]  # via its Job
    assert "capo/evaluate/distributions/metrics.py" not in by_name["sft"]


def _finished_run(root: Path, stages, args) -> dict:
    """A run whose every stage finished under today's code (stage.json written as run_stages writes it)."""
    materials, signatures = cache._materials(stages, args)
    for stage in stages:
        write_json(root / stage.name / cache.STAGE_FILE, {"stage": stage.name, "signature": signatures[stage.name],
                                                          "wall_seconds": 1.0, "material": materials[stage.name]})
    return signatures


def _downstream(stages, names: set[str]) -> set[str]:
    out = set(names)
    for stage in stages:  # in order: upstream stages come first
        if out & set(stage.inputs):
            out.add(stage.name)
    return out


@pytest.mark.parametrize("edited", ["capo/evaluate/distributions/metrics.py", "capo/mjd/estimate.py", "capo/evaluate/behaviour/judges.py"])
def test_editing_a_module_makes_exactly_the_stages_that_run_it_stale(tmp_path, monkeypatch, edited):
    args = parse(["--config", "recipes/configs/pipeline_tiny.yaml", "--output_dir", str(tmp_path)])
    stages = cache.enabled_stages(STAGES, args)
    _finished_run(tmp_path, stages, args)
    assert {row["state"] for row in cache.stage_states(STAGES, args, tmp_path)} == {"finished"}

    _edit(monkeypatch, edited)
    runs_it = {stage.name for stage in stages if edited in callable_files(stage.run)}
    states = {row["stage"]: row["state"] for row in cache.stage_states(STAGES, args, tmp_path)}
    stale = {name for name, state in states.items() if state.startswith("stale")}
    assert runs_it and stale == _downstream(stages, runs_it) and stale != set(states)
    for name in runs_it:
        assert f"code {edited}" in states[name]
    for name in stale - runs_it:
        assert "upstream" in states[name]


def test_the_named_stages_depend_on_what_they_compute(tmp_path):
    args = parse(["--config", "recipes/configs/pipeline_tiny.yaml", "--output_dir", str(tmp_path)])
    runs = {stage.name: callable_files(stage.run) for stage in cache.enabled_stages(STAGES, args)}
    assert "capo/evaluate/distributions/metrics.py" in runs["distributions"]
    assert "capo/evaluate/behaviour/judges.py" in runs["imitation"]
    for untouched in ("data", "sft", "capo", "generation"):
        assert "capo/evaluate/distributions/metrics.py" not in runs[untouched]
        assert "capo/evaluate/behaviour/judges.py" not in runs[untouched]


def test_a_sharded_run_refuses_to_resume_under_other_code(tmp_path, monkeypatch):
    from dataclasses import dataclass

    from capo.runner import ShardedRun

    @dataclass(frozen=True)
    class Unit:
        key: str

    make = lambda: ShardedRun(tmp_path, [Unit("a"), Unit("b")], shard_size=1, signature={"x": 1},
                              record_key=lambda r: r["key"], code=("capo.evaluate.distributions.metrics",))
    run = make()
    assert "code" in run.signature
    run.run(lambda chunk: [{"key": u.key} for u in chunk])
    make().check()  # same code: resumes
    _edit(monkeypatch, "capo/evaluate/distributions/metrics.py")
    with pytest.raises(DataError, match="code"):
        make().check()


def test_a_job_run_in_process_records_its_own_command(tmp_path):
    from capo.manifest import job_command, write_manifest

    with job_command(["recipes/mjd.py", "--config", "c.yaml"]):
        inside = write_manifest(tmp_path / "a", config={})
    outside = write_manifest(tmp_path / "b", config={})
    assert inside["command"] == ["recipes/mjd.py", "--config", "c.yaml"]
    assert outside["command"] != inside["command"]  # pytest's own argv again
    assert json.loads((tmp_path / "a" / "run_manifest.json").read_text())["command"] == inside["command"]


def test_the_fingerprints_are_the_same_in_every_process():
    import subprocess
    import sys

    code = ("from capo.code_identity import callable_files, digest_of; from capo.pipeline.stages import STAGES; "
            "print(digest_of({s.name: digest_of(callable_files(s.run)) for s in STAGES}))")
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert len(runs) == 1 and len(runs.pop().strip()) == 16


def test_a_module_constant_a_stage_reads_is_part_of_its_code(monkeypatch):
    from capo.pipeline.stages import lewidi

    before = callable_files(lewidi.run_lewidi)
    monkeypatch.setattr(lewidi, "CONSTANTS", ("most_frequent",))
    after = callable_files(lewidi.run_lewidi)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert changed == {"capo.pipeline.stages.lewidi:CONSTANTS"}
