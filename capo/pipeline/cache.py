"""Stages cached by signature: each stage works in `<output_dir>/<stage>/` and, last, writes `stage.json` with its
signature (a hash of its config keys, its input files' content fingerprints, its upstream stages' signatures, the
code it runs — `capo.code_identity.callable_files`: a fix to an evaluation function re-runs the stages that call it —
and what `auto` precision resolves to on this machine) and wall time.

A run computes every signature first (no stage's outputs are read for it), then:
- a stage whose `stage.json` holds the same signature is skipped (and so is everything with an unchanged signature:
  a changed config key re-runs the stages that declare it and, through their signatures, everything downstream);
- `from_stage` re-runs that stage and every later one;
- a stage that runs first loses its `stage.json` (all of them before the first one starts, so a kill never leaves a
  finished-looking stage behind a re-run one) and records `stage.pending.json`. A killed stage found with a pending
  record of the same signature resumes in its folder (the trainers' checkpoints, the run engine's shards); any other
  folder of a stage about to run is emptied first, so a stage never mixes outputs of two signatures.

A stage's wall time counts every attempt: while a stage runs, its pending record is rewritten every
`HEARTBEAT_SECONDS` with the attempt's elapsed time, so a killed attempt still counts (less at most one interval)
once the stage resumes and finishes; `stage.json` lists the attempts.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

from capo.code_identity import callable_files
from capo.errors import DataError
from capo.io import read_json, write_json
from capo.precision import precision_report
from capo.runner import fingerprint

STAGE_FILE = "stage.json"
PENDING_FILE = "stage.pending.json"
HEARTBEAT_SECONDS = 30.0


@dataclass
class Context:
    """What a stage function gets: the arguments, the run folder, and a logger."""

    args: Any
    root: Path
    log: Callable[[str], None] = print
    enabled: tuple[str, ...] = ()  # the stages this run has
    every: tuple[str, ...] = ()  # every stage there is (the report names those this configuration leaves out)

    def dir(self, stage: str) -> Path:
        return self.root / stage

    def record(self, stage: str) -> dict | None:
        """A finished stage's `stage.json` (None when it has none)."""
        path = self.dir(stage) / STAGE_FILE
        return read_json(path) if path.is_file() else None


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline. `run(ctx)` writes into `ctx.dir(name)` and returns a JSON summary whose `line` is
    the one-line summary printed when it finishes; `plan(ctx)` checks its inputs before any stage starts."""

    name: str
    run: Callable[[Context], dict]
    keys: tuple[str, ...] = ()  # argument names that shape the outputs
    inputs: tuple[str, ...] = ()  # upstream stages it reads (all needed, unless `optional_inputs`)
    files: Callable[[Any], list[str]] = field(default=lambda args: [])  # input files / model folders / hub ids
    plan: Callable[[Context], None] | None = None
    enabled: Callable[[Any], bool] = field(default=lambda args: True)
    optional_inputs: bool = False
    version: int = 1  # bump when the stage's code changes what it writes


def material(stage: Stage, args: Any, signatures: dict[str, str | None], fingerprints: dict[str, str]) -> dict:
    """Everything the stage's signature is a hash of (`fingerprints`: this run's cache of file fingerprints)."""
    for path in map(str, stage.files(args)):
        if path not in fingerprints:
            fingerprints[path] = fingerprint(path)
    return {"stage": stage.name, "version": stage.version,
            "config": {key: getattr(args, key) for key in stage.keys},
            "files": {str(path): fingerprints[str(path)] for path in stage.files(args)},
            "inputs": {name: signatures.get(name) for name in stage.inputs},
            "code": callable_files(stage.run), "precision": precision_report()["auto_dtype"]}


def why_stale(recorded: dict | None, current: dict) -> str:
    """What differs between a finished stage's signature material and today's, in a few words: the code files, config
    keys, input files and upstream stages that changed."""
    if not recorded:
        return "its record predates signature materials"
    parts = []
    for part, label in (("code", "code"), ("config", "config"), ("files", "input"), ("inputs", "upstream")):
        old, new = recorded.get(part) or {}, current.get(part) or {}
        changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        if changed:
            shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
            parts.append(f"{label} {shown}")
    for part in ("precision", "version"):
        if recorded.get(part) != current.get(part):
            parts.append(f"{part} {recorded.get(part)} -> {current.get(part)}")
    return "; ".join(parts) or "signature differs"


def signature_of(material_: dict) -> str:
    return hashlib.sha256(json.dumps(material_, sort_keys=True, default=str).encode()).hexdigest()[:16]


def enabled_stages(stages: Sequence[Stage], args: Any, skip: Sequence[str] = ()) -> list[Stage]:
    """The stages that run: not skipped, switched on by the arguments, and (unless optional) with every input."""
    names = {s.name for s in stages}
    for name in skip:
        if name not in names:
            raise DataError(f"unknown stage {name!r} (stages: {', '.join(s.name for s in stages)})", field="skip")
    kept: list[Stage] = []
    for stage in stages:
        have = {s.name for s in kept}
        if stage.name in skip or not stage.enabled(args):
            continue
        if not stage.optional_inputs and not set(stage.inputs) <= have:
            continue
        kept.append(stage)
    return kept


def _read(path: Path) -> dict | None:
    try:
        return read_json(path) if path.is_file() else None
    except DataError:
        return None  # a record that does not parse is no record: the stage runs again


class _Attempt:
    """One attempt at a stage: writes the pending record (`base` plus the attempts so far, this one with its elapsed
    seconds) on entry, then every HEARTBEAT_SECONDS from a daemon thread (what survives a kill), and once more when
    the block exits with an exception (Ctrl-C, an error: the exact time)."""

    def __init__(self, path: Path, base: dict, earlier: list[dict]):
        self.path, self.base, self.earlier = path, base, earlier
        self.started = datetime.now(UTC).isoformat(timespec="seconds")
        self._start = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def attempts(self) -> list[dict]:
        return [*self.earlier, {"started": self.started, "seconds": round(time.perf_counter() - self._start, 2)}]

    def _write(self) -> None:
        write_json(self.path, {**self.base, "attempts": self.attempts()})

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            self._try_write()

    def _try_write(self) -> None:
        try:
            self._write()
        except (OSError, DataError):  # a full disk or a removed folder costs this record, not the stage (or its error)
            pass

    def __enter__(self) -> Self:
        self._write()
        self._thread.start()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if exc_type is not None:
            self._try_write()


def _materials(stages: Sequence[Stage], args: Any) -> tuple[dict[str, dict], dict[str, str | None]]:
    """Every stage's signature material and signature, in order (upstream signatures feed downstream ones)."""
    signatures: dict[str, str | None] = {}
    materials, fingerprints = {}, {}
    for stage in stages:
        materials[stage.name] = material(stage, args, signatures, fingerprints)
        signatures[stage.name] = signature_of(materials[stage.name])
    return materials, signatures


def _plan_order(stages: Sequence[Stage], args: Any, from_stage: str | None, skip: Sequence[str]
                ) -> tuple[list[Stage], set[str]]:
    """The enabled stages in order, and the names `from_stage` forces to run again (it and every later stage)."""
    stages = enabled_stages(stages, args, skip)
    names = [s.name for s in stages]
    if from_stage is not None and from_stage not in names:
        raise DataError(f"unknown or disabled stage {from_stage!r} (this run's stages: {', '.join(names)})",
                        field="from")
    return stages, set(names[names.index(from_stage):]) if from_stage else set()


def stage_states(stages: Sequence[Stage], args: Any, root: str | Path, *, from_stage: str | None = None,
                 skip: Sequence[str] = ()) -> list[dict]:
    """Where a run stands, without running anything: per enabled stage its state (finished; stale = finished under
    another signature, runs again; in progress or interrupted, resumes / starts over; not started; `from_stage` and
    every later stage run again), the wall time spent on it so far (every attempt) and the number of attempts."""
    root = Path(root)
    stages, forced = _plan_order(stages, args, from_stage, skip)
    materials, signatures = _materials(stages, args)
    rows = []
    for stage in stages:
        record = _read(root / stage.name / STAGE_FILE)
        pending = _read(root / stage.name / PENDING_FILE)
        if record is not None and record.get("signature") == signatures[stage.name]:
            state, attempts = "finished", record.get("attempts", [{"seconds": record.get("wall_seconds", 0)}])
            state += " (runs again: --from)" if stage.name in forced else ""
        elif pending is not None:
            same = pending.get("signature") == signatures[stage.name] and stage.name not in forced
            state = "in progress or interrupted" + (" (resumes)" if same else " (starts over)")
            attempts = pending.get("attempts", [])
        else:
            stale = record is not None
            state = f"stale (runs again: {why_stale(record.get('material'), materials[stage.name])})" if stale \
                else "not started"
            attempts = []
        rows.append({"stage": stage.name, "state": state, "attempts": len(attempts),
                     "wall_seconds": round(sum(a.get("seconds", 0) for a in attempts), 2)})
    return rows


def run_stages(stages: Sequence[Stage], args: Any, root: str | Path, *, from_stage: str | None = None,
               skip: Sequence[str] = (), log: Callable[[str], None] = print) -> list[dict]:
    """Run `stages` in order with caching; returns one row per enabled stage: name, status (ran / resumed /
    cached), signature, wall_seconds, summary."""
    root = Path(root)
    every = tuple(s.name for s in stages)
    stages, forced = _plan_order(stages, args, from_stage, skip)
    ctx = Context(args, root, log, tuple(s.name for s in stages), every)
    materials, signatures = _materials(stages, args)
    records = {s.name: _read(root / s.name / STAGE_FILE) for s in stages}
    todo = [s for s in stages
            if s.name in forced or (records[s.name] or {}).get("signature") != signatures[s.name]]
    for stage in todo:  # every check before the first stage starts: bad input leaves nothing behind
        if stage.plan is not None:
            stage.plan(ctx)
    for stage in todo:
        (root / stage.name / STAGE_FILE).unlink(missing_ok=True)
    rows = []
    for stage in stages:
        signature = signatures[stage.name]
        folder = root / stage.name
        if stage not in todo:
            record = records[stage.name]
            rows.append({"stage": stage.name, "status": "cached", "signature": signature,
                         "wall_seconds": record.get("wall_seconds"), "summary": record.get("summary", {})})
            log(f"[pipeline] {stage.name}: cached ({record.get('wall_seconds', 0):.1f} s when it ran) - "
                f"{record.get('summary', {}).get('line', '')}")
            continue
        pending = _read(folder / PENDING_FILE)
        resume = stage.name not in forced and (pending or {}).get("signature") == signature
        if not resume and folder.exists():
            shutil.rmtree(folder)
        earlier = list((pending or {}).get("attempts", [])) if resume else []
        attempt = _Attempt(folder / PENDING_FILE, {"stage": stage.name, "signature": signature}, earlier)
        if resume:
            log(f"[pipeline] {stage.name}: resuming an interrupted run")
        with attempt:
            summary = stage.run(ctx)
        attempts = attempt.attempts()
        wall = round(sum(a["seconds"] for a in attempts), 2)
        write_json(folder / STAGE_FILE, {"stage": stage.name, "signature": signature, "wall_seconds": wall,
                                         "started": attempts[0]["started"],
                                         "finished": datetime.now(UTC).isoformat(timespec="seconds"),
                                         "resumed": resume, "attempts": attempts,
                                         "material": materials[stage.name], "summary": summary})
        (folder / PENDING_FILE).unlink(missing_ok=True)
        rows.append({"stage": stage.name, "status": "resumed" if resume else "ran", "signature": signature,
                     "wall_seconds": wall, "summary": summary})
        log(f"[pipeline] {stage.name}: {'resumed and finished' if resume else 'done'} in {wall:.1f} s - "
            f"{summary.get('line', '')}")
    return rows
