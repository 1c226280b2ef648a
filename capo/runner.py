"""The one resumable, sharded run engine behind generation, model explanations and MJD runs.

A job is a fixed list of units (anything with a unique `.key`; dataclasses, so their content can be hashed) cut
into shards of `shard_size`; `work(units)` turns one shard's units into one record per unit, in unit order.
Output folder layout::

    run_config.json            the run signature: everything that shapes the records (a restart must match it)
    shards/shard-00000.jsonl   one file per shard, written atomically once complete (a kill never leaves half a one)

Shard k belongs to process k % num_processes, so the merged records are the same whatever the number of processes
(and a restart may use another number). A restarted run checks the signature, skips the shards that exist (each
is checked to hold exactly the records its units expect) and runs only the others. Nothing is written to the
folder before the first shard is done: a run that fails while starting leaves no folder behind.

The signature holds the job's settings plus `units` (a hash of every unit's full content: item inputs, labels,
annotations, ...) and `shard_size`; `fingerprint` adds the content of local files and model folders, so a data file
edited or a model replaced at the same path between a kill and a restart is refused with one located line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from capo.errors import DataError
from capo.io import atomic_write_text, check_run_signature, iter_jsonl

SIGNATURE_FILE = "run_config.json"
SHARD_DIR = "shards"
# Test hook: SIGKILL this process right after writing this many shards (a real, uncatchable kill at a known point).
KILL_AFTER_ENV = "CAPO_KILL_AFTER_SHARDS"
# Files up to this size are hashed whole (about 1 s per GiB); larger ones (the multi-GB shards of a real model) by
# size, modification time and the hash of their first and last MiBs.
FULL_HASH_BYTES = 1 << 30
EDGE_BYTES = 1 << 20
# What loading a model or adapter folder reads: weights, configs, tokenizer files. Training-run records that sit in
# the same folder (trainer state, manifests, READMEs, checkpoints/) do not shape the outputs.
MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".txt", ".jinja", ".tiktoken", ".py")
NOT_MODEL_FILES = ("training_args.bin", "trainer_state.json", "run_manifest.json", "README.md")


class Keyed(Protocol):
    """A unit of work, one record's worth; `key` tells records apart (the engine checks shards by it)."""

    @property
    def key(self) -> str: ...


@dataclasses.dataclass(frozen=True)
class ItemUnit:
    """A unit that is just an item (MJD: one distribution per item)."""

    item: Any

    @property
    def key(self) -> str:
        return self.item.id


def check_positive(args: object, *names: str, optional: Sequence[str] = ()) -> None:
    """Each named argument is a whole number >= 1 (`optional` ones may also be None); for `__post_init__`, so a bad
    value stops a job before anything is written."""
    for name in names:
        value = getattr(args, name)
        if value is None and name in optional:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DataError(f"must be a whole number of at least 1, got {value!r}", field=name)


def _file_digest(path: Path) -> str:
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        if size <= FULL_HASH_BYTES:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        else:
            digest.update(f"size={size} mtime_ns={path.stat().st_mtime_ns}".encode())
            digest.update(handle.read(EDGE_BYTES))
            handle.seek(size - EDGE_BYTES)
            digest.update(handle.read(EDGE_BYTES))
    return digest.hexdigest()


def fingerprint(path_or_id: str) -> str:
    """`path_or_id`, plus `@sha256:<16 hex>` of its content when it is a local file or model/adapter folder (the
    folder's top-level model files, `MODEL_FILE_SUFFIXES`); hub ids and shipped data set names are kept as given."""
    path = Path(path_or_id)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(f for f in path.iterdir() if f.is_file() and f.suffix in MODEL_FILE_SUFFIXES
                       and f.name not in NOT_MODEL_FILES and not f.name.startswith("."))
    else:
        return path_or_id
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.name}\0{_file_digest(file)}\0".encode())
    return f"{path_or_id}@sha256:{digest.hexdigest()[:16]}"


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"cannot hash a {type(value).__name__} unit")


def units_digest(units: Sequence[Keyed]) -> str:
    """A hash of the work list: every unit's full content (for items: inputs, annotations, labels, meta), in order."""
    digest = hashlib.sha256()
    for unit in units:
        digest.update(json.dumps(unit, default=_plain, sort_keys=True, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def shard_path(output_dir: str | Path, index: int) -> Path:
    return Path(output_dir) / SHARD_DIR / f"shard-{index:05d}.jsonl"


class ShardedRun:
    """One job's units, shards and signature in `output_dir`; `record_key(record)` is the unit key a record answers."""

    def __init__(self, output_dir: str | Path, units: Sequence[Keyed], *, shard_size: int, signature: dict,
                 record_key: Callable[[dict], str], code: Sequence[str] = ()) -> None:
        if shard_size < 1:
            raise DataError(f"shard size must be at least 1, got {shard_size}", field="shard_size")
        keys = [unit.key for unit in units]
        if len(set(keys)) != len(keys):
            duplicate = next(k for k in keys if keys.count(k) > 1)
            raise DataError("duplicate unit: records could not be told apart", item=duplicate.replace("\t", " "))
        self.output_dir = Path(output_dir)
        self.units = list(units)
        self.shard_size = shard_size
        self.record_key = record_key
        self.signature = {**signature, "shard_size": shard_size, "units": units_digest(units)}
        if code:  # the modules that shape the records (and what they import): edited code never mixes into a run
            from capo.code_identity import digest_of, module_files

            self.signature["code"] = digest_of(module_files(code))
        self.n_shards = (len(units) + shard_size - 1) // shard_size
        self._recorded = False

    def shard(self, index: int) -> list[Keyed]:
        return self.units[index * self.shard_size : (index + 1) * self.shard_size]

    def path(self, index: int) -> Path:
        return shard_path(self.output_dir, index)

    def check(self) -> None:
        """Refuse a folder that holds another run (call it before loading a model: fail fast). Writes nothing."""
        signature = self.output_dir / SIGNATURE_FILE
        shards = self.output_dir / SHARD_DIR
        if not signature.exists() and shards.is_dir() and any(shards.iterdir()):
            raise DataError(f"holds shards but no {SIGNATURE_FILE} (a run of another version?): use a new output_dir",
                            path=str(self.output_dir))
        check_run_signature(signature, self.signature, record=False)

    def done(self) -> list[int]:
        """The shards that are finished."""
        return [k for k in range(self.n_shards) if self.path(k).exists()]

    def shards_of(self, process_index: int = 0, num_processes: int = 1) -> list[int]:
        return list(range(process_index, self.n_shards, num_processes))

    def _read(self, index: int) -> list[dict]:
        path = self.path(index)
        records = [row for _, row in iter_jsonl(path)]
        if [self.record_key(r) for r in records] != [u.key for u in self.shard(index)]:
            raise DataError("shard does not hold the records this run expects (was the output_dir reused?)",
                            path=str(path))
        return records

    def _record_signature(self) -> None:
        # Every process records the same signature (atomic, identical content), right before its first shard: a
        # run that fails while starting (bad model, bad data) leaves nothing behind.
        if not self._recorded:
            check_run_signature(self.output_dir / SIGNATURE_FILE, self.signature, record=True)
            self._recorded = True

    def run(self, work: Callable[[list[Keyed]], list[dict]], *, process_index: int = 0, num_processes: int = 1,
            progress: Callable[[int, list[dict]], None] | None = None) -> list[int]:
        """Run `work` on this process's unfinished shards, writing each atomically; returns the indices written.

        `progress(units, records)` is called after each shard (with no records for a shard already done).
        """
        self.check()
        kill_after = int(os.environ.get(KILL_AFTER_ENV, "0") or 0)
        written = []
        for k in self.shards_of(process_index, num_processes):
            units = self.shard(k)
            if self.path(k).exists():
                self._read(k)  # finished by an earlier run: check it, keep it
                if progress:
                    progress(len(units), [])
                continue
            records = work(units)
            if [self.record_key(r) for r in records] != [u.key for u in units]:
                raise RuntimeError("work() must return one record per unit, in unit order")
            self._record_signature()
            atomic_write_text(self.path(k), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            written.append(k)
            if progress:
                progress(len(units), records)
            if kill_after and len(written) >= kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
        return written

    def merge(self, into: str | None = None) -> list[dict] | None:
        """All records in unit order once every shard exists (else None: the run is not finished); with `into`,
        also their concatenation as `output_dir/into`, written atomically."""
        if len(self.done()) < self.n_shards:
            return None
        records = [record for k in range(self.n_shards) for record in self._read(k)]
        if into is not None:
            atomic_write_text(self.output_dir / into,
                              "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        for stale in (self.output_dir / SHARD_DIR).glob(".shard-*.tmp"):  # left by a process killed mid-write
            stale.unlink(missing_ok=True)
        return records
