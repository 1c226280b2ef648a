"""Distribution files (HJDs, MJDs, predictions): one `{"id", "distribution"}` per line, read with located checks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from capo.data.formats.common import (
    check_distribution,
    row_id,
)
from capo.errors import DataError
from capo.io import iter_jsonl, write_jsonl


def read_distributions(path: str | Path, n_labels: int = 3) -> dict[str, list[float]]:
    """id -> distribution, validated (right length, non-negative, sums to 1, unique ids)."""
    out: dict[str, list[float]] = {}
    for line, row in iter_jsonl(path):
        where = {"path": str(path), "line": line}
        item_id = row_id(row, where, out)
        out[item_id] = check_distribution(row.get("distribution"), n_labels, {**where, "item": item_id}, "distribution")
    if not out:
        raise DataError("no distributions in file", path=str(path))
    return out


def write_distributions(
    path: str | Path, distributions: Mapping[str, Sequence[float]], extra: Mapping[str, dict] | None = None
) -> None:
    extra = extra or {}
    write_jsonl(
        path, ({"id": i, "distribution": [float(x) for x in d], **extra.get(i, {})} for i, d in distributions.items())
    )
