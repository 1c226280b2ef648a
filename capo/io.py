"""File reading and writing with located errors and atomic writes (nothing partial is ever left behind)."""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from capo.errors import DataError

_TRAILING_COMMA = re.compile(r",(\s*[}\]])")


def read_text(path: str | Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError("file not found", path=str(path)) from None
    except UnicodeDecodeError as err:
        raise DataError(f"not UTF-8 text ({err.reason} at byte {err.start})", path=str(path)) from None


def read_json(path: str | Path, *, allow_trailing_commas: bool = False):
    """One JSON document. `allow_trailing_commas` for the LeWiDi `*_annotators_meta.json` files."""
    text = read_text(path)
    if allow_trailing_commas:
        text = _TRAILING_COMMA.sub(r"\1", text)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"malformed JSON: {err.msg} (column {err.colno})", path=str(path), line=err.lineno) from None


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield (1-based line number, object) for every non-blank line; a bad line raises a located DataError."""
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"malformed JSON: {err.msg} (column {err.colno})", path=str(path), line=number) from None
        if not isinstance(row, dict):
            raise DataError(f"expected a JSON object, got {type(row).__name__}", path=str(path), line=number)
        yield number, row


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def check_run_signature(path: str | Path, signature: dict, *, record: bool = True) -> None:
    """Refuse to resume into a folder whose run was started with other settings (the signature stored as JSON at
    `path`); with `record`, store `signature` there on first use. Resumable commands call this before any work."""
    path = Path(path)
    signature = json.loads(json.dumps(signature))  # compared as it reads back from JSON
    if path.exists():
        previous = read_json(path)
        changed = sorted(k for k in set(previous) | set(signature) if previous.get(k) != signature.get(k))
        if changed:
            key = changed[0]
            raise DataError(
                f"holds a run with other settings ({', '.join(changed)}; {key}: {previous.get(key)!r} there, "
                f"{signature.get(key)!r} now): restart with the same arguments or use a new output_dir",
                path=str(path.parent), field=key,
            )
    elif record:
        write_json(path, signature)
