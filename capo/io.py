"""File reading and writing with located errors and atomic writes (nothing partial is ever left behind)."""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from capo.errors import DataError

_TRAILING_COMMA = re.compile(r",(\s*[}\]])")


def _os_problem(err: OSError) -> str:
    if isinstance(err, IsADirectoryError):
        return "is a folder, not a file"
    if isinstance(err, NotADirectoryError):
        return "a part of this path is a file, not a folder"
    if isinstance(err, PermissionError):
        return "permission denied"
    return err.strerror or type(err).__name__


def read_text(path: str | Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"not UTF-8 text ({err.reason} at byte {err.start})", path=str(path)) from None
    except FileNotFoundError:
        raise DataError("file not found", path=str(path)) from None
    except OSError as err:
        raise DataError(f"cannot read: {_os_problem(err)}", path=str(path)) from None


def check_input_file(path: str | Path) -> None:
    """Fail now, not after a model has loaded: `path` must be a readable file."""
    path = Path(path)
    if path.is_dir():
        raise DataError("cannot read: is a folder, not a file", path=str(path))
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        raise DataError("file not found", path=str(path)) from None
    except OSError as err:
        raise DataError(f"cannot read: {_os_problem(err)}", path=str(path)) from None


def check_output(path: str | Path, *, folder: bool = False) -> None:
    """Fail now, before any work, if `path` cannot be written as a file (or, with `folder`, made a folder): the
    path is the other kind, a parent is a file, or the nearest existing parent is not writable."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise DataError("cannot write: " + ("is a file, not a folder" if folder else "is a folder, not a file"),
                        path=str(path))
    parent = path if folder else path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise DataError(f"cannot write: {parent} is a file, not a folder", path=str(path))
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise DataError("cannot write: permission denied", path=str(path))


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_LOCAL_ROOTS = ("models", "runs", "results", "data", "shared")  # this project's folders: never hub organisations


def check_model_path(name_or_path: str | Path, *, kind: str = "model", hint: str | None = None) -> None:
    """Fail at once, before anything loads, when a model / adapter / tokenizer is neither a local folder nor (a hub
    id that is) in the Hugging Face cache; without this a missing local folder is tried on the hub, with retries."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        wanted = {"model": ("config.json", "adapter_config.json"), "adapter": ("adapter_config.json",)}.get(kind, ())
        if wanted and not any((path / name).is_file() for name in wanted):
            raise DataError(f"not a{'n' if kind[0] in 'aeiou' else ''} {kind} folder (no {' or '.join(wanted)})"
                            + (f": {hint}" if hint else ""), path=text)
        if kind == "adapter":
            check_adapter_weights(text)
        return
    if path.exists():
        raise DataError(f"expected a {kind} folder or hub id, got a file", path=text)
    looks_local = (not _HUB_ID.fullmatch(text) or text.startswith((".", "~")) or path.is_absolute()
                   or text.split("/")[0] in _LOCAL_ROOTS)
    if not looks_local:
        from huggingface_hub import constants
        from huggingface_hub.file_download import repo_folder_name

        if not constants.HF_HUB_OFFLINE or (Path(constants.HF_HUB_CACHE) / repo_folder_name(
                repo_id=text, repo_type="model")).is_dir():
            return  # a hub id that from_pretrained can fetch or find in the cache
        raise DataError(f"{kind} not found: no such folder, and not in the Hugging Face cache (offline)"
                        + (f": {hint}" if hint else ""), path=text)
    if hint is None and kind == "model" and "corpus-lm" in path.name:
        hint = f"build it first with: python recipes/build_corpus_lm.py --output_dir {text}"
    raise DataError(f"{kind} folder not found" + (f": {hint}" if hint else ""), path=text)


ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")  # what PEFT's from_pretrained loads


def check_adapter_weights(folder: str | Path) -> None:
    """Fail at once, before any model loads, when a local adapter folder has its config but no weights (a copy or a
    save that stopped half-way): PEFT would otherwise take the folder for a hub id, after the base model has loaded,
    and fail with a traceback about repository names. A hub id (no such folder) is left to `check_model_path`."""
    path = Path(folder).expanduser()
    if (path / "adapter_config.json").is_file() and not any((path / name).is_file() for name in ADAPTER_WEIGHTS):
        raise DataError(f"adapter folder has adapter_config.json but no adapter weights ({' or '.join(ADAPTER_WEIGHTS)})",
                        path=str(folder))


# What a Trainer checkpoint holds once its save has finished: the trainer state (written last) and the weights.
CHECKPOINT_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                      "pytorch_model.bin.index.json", *ADAPTER_WEIGHTS)


def checkpoint_problem(folder: str | Path) -> str | None:
    """Why `folder` is not a complete `transformers.Trainer` checkpoint, or None when it is. `Trainer` writes a
    checkpoint in place (weights, optimizer, scheduler, RNG state, then `trainer_state.json` last), so a kill during
    a save leaves a folder without a readable trainer state, or without weights."""
    folder = Path(folder)
    state = folder / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json (its save was interrupted)"
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return "trainer_state.json is unreadable or cut short (its save was interrupted)"
    if not any((folder / name).is_file() for name in CHECKPOINT_WEIGHTS):
        return f"no model weights ({', '.join(CHECKPOINT_WEIGHTS)})"
    return None


def last_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The newest `checkpoint-N` in `output_dir` that is complete (`checkpoint_problem`): a half-written newer one is
    skipped, so a resumed run starts from the last save that finished (None: no complete checkpoint, a fresh start).
    Use this instead of `transformers.trainer_utils.get_last_checkpoint`, which returns the newest folder whatever
    it holds."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    steps = [(int(p.name.rsplit("-", 1)[1]), p) for p in output_dir.glob("checkpoint-*")
             if p.name.rsplit("-", 1)[1].isdigit() and p.is_dir() and checkpoint_problem(p) is None]
    return str(max(steps)[1]) if steps else None


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


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path` (usual permissions)."""
    path = Path(path)
    check_output(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it 0600; the file gets what open() would give it
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """`text` as UTF-8, written atomically (`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process umask. Linux shows it in /proc/self/status; elsewhere reading it means setting it and putting it
    straight back, under a lock, since the pipeline's heartbeat thread writes files too."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


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
