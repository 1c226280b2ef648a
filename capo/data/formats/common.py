"""What every source format shares: where the vendored data lives, item ids (VariErr ids for VariErr items,
content ids otherwise: `text_id`, `nli_item_id`), and the located checks of fields, labels, explanations and
distributions that the readers run."""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Container, Mapping
from functools import lru_cache
from pathlib import Path

from capo.data.schema import Item
from capo.errors import DataError
from capo.io import iter_jsonl

DATA_DIR = Path(os.environ.get("CAPO_DATA_DIR", Path(__file__).resolve().parents[3] / "data"))


VARIERR_PATH = DATA_DIR / "varierr" / "varierr.json"


NLI341_PATH = DATA_DIR / "mjd" / "NLI_explanations.json"


CHAOS_DIR = DATA_DIR / "mjd" / "chaos_dev_test"


MODEL_EXPLANATIONS_DIR = DATA_DIR / "mjd" / "model_explanations"


LEWIDI_DIR = DATA_DIR / "lewidi2025"


SUM_TOLERANCE = 5e-3  # distributions may be rounded to 2 decimals in source files


def norm_text(text: str) -> str:
    return " ".join(text.split())


def text_id(*inputs: str) -> str:
    """Stable id for an item that has none: a hash of its whitespace-normalised input texts."""
    digest = hashlib.sha1("\n".join(norm_text(t) for t in inputs).encode("utf-8")).hexdigest()
    return f"t{digest[:12]}"


@lru_cache(maxsize=4)
def _varierr_ids(path: str) -> dict[tuple[str, str], str]:
    if not Path(path).exists():
        return {}
    return {
        (norm_text(row["context"]), norm_text(row["statement"])): row["id"] for _, row in iter_jsonl(path)
    }


def nli_item_id(premise: str, hypothesis: str, varierr_path: str | Path = VARIERR_PATH) -> str:
    """The VariErr id of a premise/hypothesis pair when it is a VariErr item, else its content id."""
    found = _varierr_ids(str(varierr_path)).get((norm_text(premise), norm_text(hypothesis)))
    return found or text_id(premise, hypothesis)


def require_field(row: dict, key: str, kind: type | tuple, where: dict):
    if key not in row:
        raise DataError("missing field", field=key, **where)
    value = row[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int to isinstance: a JSON `true` id would silently become the item "True"
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(f"expected {names}, got {type(value).__name__}", field=key, **where)
    return value


def optional_field(row: dict, key: str, kind: type, where: dict, default):
    """A field that may be absent (or null); when present it must have the right type."""
    if row.get(key) is None:
        return default
    return require_field(row, key, kind, where)


def check_explanation(text, where: dict, field: str) -> str:
    if not isinstance(text, str):
        raise DataError(f"expected a string explanation, got {type(text).__name__}", field=field, **where)
    if not text.strip():
        raise DataError("empty explanation", field=field, **where)
    return text.strip()


def check_label(space, label, where: dict, field: str) -> str:
    try:
        return space.normalise(label)
    except ValueError as err:
        raise DataError(str(err), field=field, **where) from None


def check_distribution(values, n_labels: int, where: dict, field: str) -> list[float]:
    """A probability vector of the right length, non-negative, summing to 1 (within rounding)."""
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise DataError("expected a list of numbers", field=field, **where)
    if len(values) != n_labels:
        raise DataError(f"expected {n_labels} values, got {len(values)}", field=field, **where)
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise DataError("values must be finite and non-negative", field=field, **where)
    total = sum(values)
    if abs(total - 1.0) > SUM_TOLERANCE:
        raise DataError(f"distribution sums to {total:.6g}, not 1", field=field, **where)
    return [v / total for v in values]


def row_id(row: Mapping, where: dict, seen: Container[str] = ()) -> str:
    """A JSONL row's id as a string: present, a string or an integer (never a boolean), not one of `seen`; a row
    without one is an error, never silently dropped. `where`: its path and line."""
    item_id = row.get("id")
    if not isinstance(item_id, (str, int)) or isinstance(item_id, bool):
        raise DataError("missing or invalid id", field="id", **where)
    if str(item_id) in seen:
        raise DataError("duplicate id", field="id", item=str(item_id), **where)
    return str(item_id)


def normalise_counts(counts: list[float]) -> list[float]:
    total = sum(counts)
    return [c / total for c in counts] if total else [0.0] * len(counts)


def nli_pair(row: dict, where: dict, varierr_path: str | Path = VARIERR_PATH) -> tuple[str, str, str]:
    """(premise, hypothesis, item id) of an MJD-paper row; the id is also put into `where` for later errors."""
    premise = require_field(row, "premise", str, where)
    hypothesis = require_field(row, "hypothesis", str, where)
    where["item"] = nli_item_id(premise, hypothesis, varierr_path)
    return premise, hypothesis, where["item"]


def nli_item(item_id: str, premise: str, hypothesis: str, **fields) -> Item:
    """An NLI `Item` (the other `Item` fields by keyword)."""
    return Item(id=item_id, task="nli", inputs={"premise": premise, "hypothesis": hypothesis}, **fields)
