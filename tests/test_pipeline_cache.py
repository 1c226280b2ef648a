"""capo.pipeline.cache on hand-made stages: the heartbeat keeps a running stage's time in its pending record; an
interrupted stage's time counts in its wall time once it resumes, and a stage that runs from scratch forgets earlier
attempts; `stage_states` reads where a run stands."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest

from capo.pipeline import cache
from capo.pipeline.cache import PENDING_FILE, STAGE_FILE, Stage, run_stages


class Interrupted(Exception):
    pass


def _stage(seconds: float, fail: bool) -> Stage:
    def run(ctx):
        time.sleep(seconds)
        if fail:
            raise Interrupted
        return {"line": "ok"}

    return Stage(name="work", run=run, keys=("value",))


def _pending_seconds(folder) -> float:
    return json.loads((folder / PENDING_FILE).read_text())["attempts"][-1]["seconds"]


def test_the_heartbeat_records_a_running_stages_time(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "HEARTBEAT_SECONDS", 0.05)
    seen = []

    def run(ctx):  # what a kill would leave behind: the pending record as the heartbeat last wrote it
        deadline = time.monotonic() + 10
        while _pending_seconds(ctx.dir("work")) < cache.HEARTBEAT_SECONDS and time.monotonic() < deadline:
            time.sleep(0.01)
        seen.append(_pending_seconds(ctx.dir("work")))
        return {"line": "ok"}

    run_stages([Stage(name="work", run=run)], SimpleNamespace(), tmp_path, log=lambda line: None)
    assert seen[0] >= cache.HEARTBEAT_SECONDS  # only a write after the first interval can say so


def test_a_resumed_stage_counts_the_interrupted_attempt(tmp_path, monkeypatch):
    args = SimpleNamespace(value=1)
    with pytest.raises(Interrupted):
        run_stages([_stage(0.3, fail=True)], args, tmp_path, log=lambda line: None)
    pending = json.loads((tmp_path / "work" / PENDING_FILE).read_text())
    assert len(pending["attempts"]) == 1 and pending["attempts"][0]["seconds"] >= 0.3  # written as it failed

    rows = run_stages([_stage(0.1, fail=False)], args, tmp_path, log=lambda line: None)
    record = json.loads((tmp_path / "work" / STAGE_FILE).read_text())
    assert rows[0]["status"] == "resumed" and record["resumed"] is True
    assert len(record["attempts"]) == 2 and record["attempts"][0] == pending["attempts"][0]
    assert record["attempts"][1]["seconds"] >= 0.1
    assert record["wall_seconds"] == pytest.approx(sum(a["seconds"] for a in record["attempts"]), abs=0.01)
    assert record["wall_seconds"] >= 0.4 and record["started"] == pending["attempts"][0]["started"]
    assert not (tmp_path / "work" / PENDING_FILE).exists()


def test_a_changed_signature_starts_over_without_the_old_attempts(tmp_path):
    with pytest.raises(Interrupted):
        run_stages([_stage(0.2, fail=True)], SimpleNamespace(value=1), tmp_path, log=lambda line: None)
    rows = run_stages([_stage(0.0, fail=False)], SimpleNamespace(value=2), tmp_path, log=lambda line: None)
    record = json.loads((tmp_path / "work" / STAGE_FILE).read_text())
    assert rows[0]["status"] == "ran" and record["resumed"] is False
    assert len(record["attempts"]) == 1


def test_stage_states_say_where_a_run_stands_without_running_anything(tmp_path):
    calls = []

    def stage(name: str, fail: bool = False, inputs: tuple[str, ...] = ()) -> Stage:
        def run(ctx):
            calls.append(name)
            time.sleep(0.15)
            if fail:
                raise Interrupted
            return {"line": name}
        return Stage(name=name, run=run, keys=("value",) if name == "first" else (), inputs=inputs)

    args = SimpleNamespace(value=1)
    with pytest.raises(Interrupted):
        run_stages([stage("first"), stage("second", fail=True, inputs=("first",)), stage("third")], args, tmp_path,
                   log=lambda line: None)
    calls.clear()
    stages = [stage("first"), stage("second", inputs=("first",)), stage("third")]
    states = {r["stage"]: r for r in cache.stage_states(stages, args, tmp_path)}
    assert calls == []  # nothing ran
    assert states["first"]["state"] == "finished" and states["first"]["attempts"] == 1
    assert states["first"]["wall_seconds"] >= 0.15
    assert states["second"]["state"] == "in progress or interrupted (resumes)" and states["second"]["attempts"] == 1
    assert states["second"]["wall_seconds"] >= 0.15  # the interrupted attempt's time
    assert states["third"] == {"stage": "third", "state": "not started", "attempts": 0, "wall_seconds": 0}

    changed = {r["stage"]: r["state"] for r in cache.stage_states(stages, SimpleNamespace(value=2), tmp_path)}
    assert changed == {"first": "stale (runs again: config value)", "second": "in progress or interrupted (starts over)",
                       "third": "not started"}
    forced = {r["stage"]: r["state"] for r in cache.stage_states(stages, args, tmp_path, from_stage="first")}
    assert forced == {"first": "finished (runs again: --from)", "second": "in progress or interrupted (starts over)",
                      "third": "not started"}
