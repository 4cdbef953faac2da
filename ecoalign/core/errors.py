"""The one exception type users see for bad input: it names the file, the place and what was expected."""
from __future__ import annotations


class EcoalignInputError(ValueError):
    """Bad user input (a file, a row, a column, a value), with a message that says how to fix it."""

    def __init__(self, message: str, *, path: object | None = None, where: str | None = None,
                 expected: str | None = None):
        parts = []
        if path is not None:
            parts.append(f"{path}")
        if where:
            parts.append(where)
        head = ": ".join(parts)
        text = f"{head}: {message}" if head else message
        if expected:
            text += f" (expected {expected})"
        super().__init__(text)
        self.path = path
        self.where = where
        self.expected = expected
