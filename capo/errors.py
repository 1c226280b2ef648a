"""Errors that a user can fix: each renders as one line naming the file, the line or item id, and the field."""

from __future__ import annotations


class DataError(Exception):
    """Bad input. `str(err)` is a single line: `file:line: item X: field 'f': what is wrong`."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        item: str | None = None,
        field: str | None = None,
    ) -> None:
        self.message, self.path, self.line, self.item, self.field = message, path, line, item, field
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.path is not None:
            where.append(f"{self.path}:{self.line}" if self.line is not None else str(self.path))
        if self.item is not None:
            where.append(f"item {self.item}")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        text = ": ".join(where + [self.message]) if where else self.message
        return " ".join(text.split())  # one line, always

    def at(self, **where) -> DataError:
        """The same error with location parts filled in (those already set win)."""
        merged = {k: getattr(self, k) for k in ("path", "line", "item", "field")}
        for key, value in where.items():
            if merged.get(key) is None:
                merged[key] = value
        return DataError(self.message, **merged)
