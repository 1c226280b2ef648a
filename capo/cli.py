"""Shared command-line plumbing: a user error is one line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

from capo.errors import DataError


def run_main(main: Callable[..., object]) -> Callable[..., object]:
    """Decorate a script's `main`: DataError -> `error: <one line>` on stderr and exit code 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except DataError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
