"""Run manifests: what produced an output folder (resolved config, package versions, git commit, data hashes, seed)."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import platform
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from capo.io import write_json
from capo.precision import precision_report

# The command line of the job being run, as `sys.argv` would hold it had the job been started on its own: set by
# `job_command` while the pipeline runs an entry point in its own process (where `sys.argv` is the pipeline's).
_COMMAND: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("capo_job_command", default=None)


@contextlib.contextmanager
def job_command(argv: list[str]) -> Iterator[None]:
    """Within this block, manifests record `argv` (script first, as `sys.argv`) as the command that made them."""
    token = _COMMAND.set(list(argv))
    try:
        yield
    finally:
        _COMMAND.reset(token)


def current_command() -> list[str]:
    return _COMMAND.get() or list(sys.argv)

PACKAGES = ("capo", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "tokenizers", "numpy", "scipy",
            "scikit-learn", "dcor", "sentence-transformers", "bitsandbytes", "vllm")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The checkout's HEAD, with `-dirty` when there are uncommitted changes; None outside a git checkout."""
    cwd = cwd or Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("-dirty" if dirty else "")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _plain(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if hasattr(value, "to_dict"):
        return _plain(value.to_dict())
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def write_manifest(output_dir: str | Path, *, config, data_files=(), seed: int | None = None, extra: dict | None = None) -> dict:
    """Write `run_manifest.json` into `output_dir` and return it. `config` may mix dataclasses and dicts."""
    manifest = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": current_command(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": git_commit(),
        "packages": package_versions(),
        "precision": precision_report(),  # what dtype/bf16 "auto" resolved to on this machine, and why
        "seed": seed,
        "config": _plain(config),
        "data_files": {str(p): file_sha256(p) for p in data_files},
        **(extra or {}),
    }
    write_json(Path(output_dir) / "run_manifest.json", manifest)
    return manifest
