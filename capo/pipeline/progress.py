"""Progress bars for the pipeline's long steps (tqdm, with rate and ETA)."""

from __future__ import annotations

import sys
from typing import Any


def bar(total: int, desc: str, unit: str) -> Any:
    """A tqdm bar on stderr, where the HF stack puts its own."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr)

