"""Progress bars (tqdm: rate and ETA) for the long steps whose own tool prints lines instead of a bar."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


def bar(total: int, desc: str, unit: str) -> Any:
    """A tqdm bar on stderr, where the HF stack puts its own."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr)


def counting_log(progress: Any, counts: Callable[[str], bool]) -> Callable[[str], None]:
    """A `log` for a library call that reports progress as lines (run_mjd: a line per shard; attribution: a line per
    model): a line for which `counts` holds advances `progress`, any other line is printed above the bar."""

    def log(message: str) -> None:
        if counts(message):
            progress.update(1)
        else:
            progress.write(str(message))

    return log
